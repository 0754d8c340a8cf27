"""The fleet: every tenant a key may see, its live split, its canary's step and state, and what
needs an operator's attention — in five statements, however many tenants there are.

The page lists every tenant, so the work per tenant is what its render time is made of: rows are
read as plain tuples, and what many tenants share (a split's shares, a canary policy) is built
once per distinct value. Each tenant is read with its live canary, by the columns and conditions
`ftdeploy status` reads canaries with (`registry.canary.canaries`), and the counts by its same
statement."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Select,
    String,
    and_,
    bindparam,
    cast,
    func,
    join,
    or_,
    select,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from registry.canary.canaries import (
    canary_columns,
    live_canary,
    live_conditions,
    read_counts,
)
from registry.db import read_beside
from registry.models import (
    Deployment,
    DeploymentPolicy,
    DeploymentStatus,
    EventState,
    FinetuningRun,
    JobEvent,
    ModelVersion,
    Operation,
    OperationStatus,
    Strategy,
    Tenant,
    in_production,
)
from registry.views.canary import FleetCanary, fleet_canary
from registry.views.splits import Share, shares_of

# Failed job events and failed operations ask for attention this long after they ended.
ATTENTION_WINDOW = timedelta(hours=24)
# Operations that have not reached a final state, and those that ended without doing what was
# asked for a reason an operator should see (a cancelled one was someone's own decision).
OPEN_OPERATIONS = (OperationStatus.QUEUED, OperationStatus.RUNNING)
FAILED_OPERATIONS = (OperationStatus.FAILED, OperationStatus.STALE, OperationStatus.EXPIRED)


@dataclass(slots=True)
class FleetRow:
    tenant: str  # slug
    tenant_id: uuid.UUID
    strategy: str
    auto_promote: bool
    split: Sequence[Share] = ()
    canary: FleetCanary | None = None
    staged: list[int] = field(default_factory=list)  # blue-green versions waiting for a switch
    awaiting_evaluation: int = 0
    failed_events: int = 0
    open_operations: int = 0
    failed_operations: int = 0
    paused: bool = False  # auto-promotion paused (when the registry has pauses)

    # Why this tenant needs an operator, one short sentence each; empty when it does not. Set
    # once the row is complete (`_attention`).
    attention: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Fleet:
    rows: list[FleetRow]
    as_of: datetime

    @property
    def attention(self) -> list[FleetRow]:
        return [row for row in self.rows if row.attention]


def _attention(row: FleetRow) -> list[str]:
    """Why the tenant of a complete row needs an operator, one short sentence each."""
    reasons = []
    if row.canary is not None:
        if row.canary.action == "error":
            reasons.append(f"canary v{row.canary.version} cannot be decided")
        elif row.canary.near_deadline:
            reasons.append(f"canary v{row.canary.version} is near its deadline")
        elif row.canary.waiting_for_data:
            reasons.append(f"canary v{row.canary.version} is holding for data")
    reasons += [f"v{v} is staged, waiting for its switch" for v in row.staged]
    if row.awaiting_evaluation:
        reasons.append(f"{_count(row.awaiting_evaluation, 'deployment')} awaiting evaluation")
    if row.failed_events:
        reasons.append(f"{_count(row.failed_events, 'failed job event')} in the last day")
    if row.open_operations:
        reasons.append(f"{_count(row.open_operations, 'operation')} queued or running")
    if row.failed_operations:
        reasons.append(f"{_count(row.failed_operations, 'operation')} failed in the last day")
    if row.paused:
        reasons.append("auto-promotion is paused")
    return reasons


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def fleet(session: Session, tenant_ids: Collection[uuid.UUID] | None, now: datetime) -> Fleet:
    """Every tenant in `tenant_ids` (None: every tenant), by slug. Reads only, no lock; five
    statements whatever the number of tenants. A tenant outside `tenant_ids` is absent from
    everything returned, its name included."""
    scope = None if tenant_ids is None else list(tenant_ids)
    statements = _statements(scope is not None)
    within = {} if scope is None else {"scope": scope}
    since = {"since": now - ATTENTION_WINDOW}

    def completions(connection: Connection) -> _Completions:
        """What completes the tenants' rows: the canaries' counts, the deployments waiting for
        a switch or an evaluation, the failed job events and the operations."""
        read = connection.execute
        return (
            read_counts(connection),
            list(read(statements.pending, within)),
            list(read(statements.failed_events, since)),
            list(read(statements.operations, within | since)),
        )

    # Read beside the tenants, on a second connection: the tenants and the canaries' counts are
    # most of the page's time in the database, and neither needs the other.
    completed = read_beside(session, completions)
    # Plain rows through the session's connection (Core): the ORM's result machinery costs a
    # third more per row, and a fleet has thousands of rows.
    found_tenants = session.connection().execute(statements.tenants, within).all()
    counts, pending, failed_events, operations = completed()
    rows: dict[uuid.UUID, FleetRow] = {}
    row = None
    # A tenant's row comes with its live canary's columns (NULL without one), by slug and then
    # version: a tenant with two live canaries has two rows in a row, and shows the newest.
    for found in found_tenants:
        tenant_id, slug, strategy, auto_promote, paused, split, deployment_id = found[:7]
        if row is None or row.tenant != slug:
            row = rows[tenant_id] = FleetRow(
                slug,
                tenant_id,
                strategy or Strategy.IMMEDIATE,
                bool(auto_promote),
                _split(split),
                paused=bool(paused),
            )
        if deployment_id is not None:
            live = live_canary(found[6:], counts.get(deployment_id.int))
            row.canary = fleet_canary(live, now)

    for tenant_id, status, number in pending:
        row = rows.get(tenant_id)
        if row is None:
            continue
        if status == DeploymentStatus.STAGED and number is not None:
            row.staged.append(number)
        elif status == DeploymentStatus.AWAITING_EVALUATION:
            row.awaiting_evaluation += 1
    _failed_events(failed_events, rows)
    _operations(operations, rows)
    for row in rows.values():
        row.attention = _attention(row)
    return Fleet(list(rows.values()), now)


# The canaries' counts by deployment, then the rows of `pending`, `failed_events`, `operations`.
_Completions = tuple[dict[int, Any], list[Any], list[Any], list[Any]]


class _Statements(NamedTuple):
    tenants: Select[*tuple[Any, ...]]
    pending: Select[*tuple[Any, ...]]
    failed_events: Select[*tuple[Any, ...]]
    operations: Select[*tuple[Any, ...]]


@lru_cache(maxsize=2)
def _statements(scoped: bool) -> _Statements:
    """The fleet's statements, built once per kind (every tenant, or those in the bound `scope`;
    the window's start bound as `since`): building a statement and its cache key is Python work
    that each page would otherwise repeat, and it does not depend on the data."""

    def within(column: InstrumentedAttribute[uuid.UUID]) -> list[ColumnElement[bool]]:
        return [column.in_(bindparam("scope", expanding=True))] if scoped else []

    # Each tenant's split as one string, `1:90,2:10` (aggregated here rather than read as a row
    # per version: a fleet has a few distinct splits and twice as many versions as tenants).
    version = ModelVersion
    pair = cast(version.version, String) + ":" + cast(version.traffic_percent, String)
    splits = (
        select(version.tenant_id, func.aggregate_strings(pair, ",").label("split"))
        .where(in_production(version.status), *within(version.tenant_id))
        .group_by(version.tenant_id)
        .subquery()
    )
    # Each tenant with its live canary, if any (the columns `live_canary` reads): one statement
    # rather than the tenants and then the canaries, which read the same tenants and policies.
    policy = DeploymentPolicy
    live = join(Deployment, ModelVersion, and_(*live_conditions()))
    tenants = (
        select(
            Tenant.id,
            Tenant.slug,
            policy.strategy,
            policy.auto_promote,
            policy.paused,
            splits.c.split,
            *canary_columns(),
        )
        .outerjoin(policy, policy.tenant_id == Tenant.id)
        .outerjoin(splits, splits.c.tenant_id == Tenant.id)
        .outerjoin(live, Deployment.tenant_id == Tenant.id)
        .where(*within(Tenant.id))
        .order_by(Tenant.slug, ModelVersion.version)
    )

    waiting = (DeploymentStatus.STAGED, DeploymentStatus.AWAITING_EVALUATION)
    pending = (
        select(Deployment.tenant_id, Deployment.status, ModelVersion.version)
        .outerjoin(ModelVersion, ModelVersion.id == Deployment.version_id)
        .where(Deployment.status.in_(waiting), *within(Deployment.tenant_id))
        .order_by(ModelVersion.version)
    )

    since: BindParameter[datetime] = bindparam("since")
    failed_events = (
        select(JobEvent.tenant_hint, FinetuningRun.tenant_id, func.count())
        .outerjoin(FinetuningRun, FinetuningRun.openai_job_id == JobEvent.openai_job_id)
        .where(JobEvent.state == EventState.FAILED, JobEvent.updated_at >= since)
        .group_by(JobEvent.tenant_hint, FinetuningRun.tenant_id)
    )

    recent_failure = Operation.status.in_(FAILED_OPERATIONS) & (Operation.finished_at >= since)
    operations = (
        select(Operation.tenant_id, Operation.status, func.count())
        .where(or_(Operation.status.in_(OPEN_OPERATIONS), recent_failure))
        .where(*within(Operation.tenant_id))
        .group_by(Operation.tenant_id, Operation.status)
    )
    return _Statements(tenants, pending, failed_events, operations)


@lru_cache(maxsize=4096)  # a fleet has few distinct splits
def _split(text: str | None) -> tuple[Share, ...]:
    """The shares of a split as the tenants' statement spells it, `1:90,2:10` (in any order)."""
    if not text:
        return ()
    pairs = (pair.split(":") for pair in text.split(","))
    return shares_of(tuple(sorted((int(number), int(percent)) for number, percent in pairs)))


def _failed_events(found: Iterable[Any], rows: dict[uuid.UUID, FleetRow]) -> None:
    """Failed job events per tenant: the tenant of the event's run, else the tenant it named."""
    names: dict[str, uuid.UUID] | None = None
    for hint, run_tenant, count in found:
        tenant_id = run_tenant
        if tenant_id is None:
            if names is None:  # built only for events without a run (a thousand UUIDs as text)
                names = {row.tenant: tenant_id for tenant_id, row in rows.items()}
                names |= {str(tenant_id): tenant_id for tenant_id in rows}
            tenant_id = names.get(hint or "")
        if tenant_id in rows:
            rows[tenant_id].failed_events += int(count)


def _operations(found: Iterable[Any], rows: dict[uuid.UUID, FleetRow]) -> None:
    for tenant_id, status, count in found:
        row = rows.get(tenant_id)
        if row is None:
            continue
        if status in OPEN_OPERATIONS:
            row.open_operations += int(count)
        else:
            row.failed_operations += int(count)
