"""The fleet: every tenant a key may see, its live split, its canary's step and state, and what
needs an operator's attention — in seven statements, however many tenants there are.

The page lists every tenant, so the work per tenant is what its render time is made of: rows are
read as plain tuples, and what many tenants share (a split's shares, a canary policy) is built
once per distinct value."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from registry.canary.canaries import read_live_canaries
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
    VersionStatus,
)
from registry.views.canary import FleetCanary, fleet_canary
from registry.views.splits import Share, shares_of

# Failed job events and failed operations ask for attention this long after they ended.
ATTENTION_WINDOW = timedelta(hours=24)
# Operations that have not reached a final state, and those that ended without doing what was
# asked for a reason an operator should see (a cancelled one was someone's own decision).
OPEN_OPERATIONS = (OperationStatus.QUEUED, OperationStatus.RUNNING)
FAILED_OPERATIONS = (OperationStatus.FAILED, OperationStatus.STALE, OperationStatus.EXPIRED)


@dataclass
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

    @cached_property
    def attention(self) -> list[str]:
        """Why this tenant needs an operator, one short sentence each; empty when it does not."""
        reasons = []
        if self.canary is not None:
            if self.canary.action == "error":
                reasons.append(f"canary v{self.canary.version} cannot be decided")
            elif self.canary.near_deadline:
                reasons.append(f"canary v{self.canary.version} is near its deadline")
            elif self.canary.waiting_for_data:
                reasons.append(f"canary v{self.canary.version} is holding for data")
        reasons += [f"v{v} is staged, waiting for its switch" for v in self.staged]
        if self.awaiting_evaluation:
            reasons.append(f"{_count(self.awaiting_evaluation, 'deployment')} awaiting evaluation")
        if self.failed_events:
            reasons.append(f"{_count(self.failed_events, 'failed job event')} in the last day")
        if self.open_operations:
            reasons.append(f"{_count(self.open_operations, 'operation')} queued or running")
        if self.failed_operations:
            reasons.append(f"{_count(self.failed_operations, 'operation')} failed in the last day")
        if self.paused:
            reasons.append("auto-promotion is paused")
        return reasons


@dataclass(frozen=True)
class Fleet:
    rows: list[FleetRow]
    as_of: datetime

    @property
    def attention(self) -> list[FleetRow]:
        return [row for row in self.rows if row.attention]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def fleet(session: Session, tenant_ids: Collection[uuid.UUID] | None, now: datetime) -> Fleet:
    """Every tenant in `tenant_ids` (None: every tenant), by slug. Reads only, no lock; seven
    statements whatever the number of tenants. A tenant outside `tenant_ids` is absent from
    everything returned, its name included."""
    policy = DeploymentPolicy
    tenants = select(Tenant.id, Tenant.slug, policy.strategy, policy.auto_promote, policy.paused)
    tenants = tenants.outerjoin(policy, policy.tenant_id == Tenant.id)
    if tenant_ids is not None:
        tenants = tenants.where(Tenant.id.in_(list(tenant_ids)))
    # Plain rows through the session's connection (Core): the ORM's result machinery costs a
    # third more per row, and a fleet has thousands of rows.
    read = session.connection().execute
    rows: dict[uuid.UUID, FleetRow] = {}
    for tenant_id, slug, strategy, auto_promote, paused in read(
        tenants.order_by(Tenant.slug)
    ).all():
        rows[tenant_id] = FleetRow(
            slug, tenant_id, strategy or Strategy.IMMEDIATE, bool(auto_promote), paused=bool(paused)
        )
    if not rows:
        return Fleet([], now)
    scope = list(rows) if tenant_ids is not None else None

    # The rows again, by the id's integer, for the lookups made per tenant: a UUID's hash and
    # equality are Python code.
    by_id = {tenant_id.int: row for tenant_id, row in rows.items()}
    splits: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for tenant_id, number, percent in read(
        select(ModelVersion.tenant_id, ModelVersion.version, ModelVersion.traffic_percent).where(
            ModelVersion.status == VersionStatus.PRODUCTION, *_within(ModelVersion.tenant_id, scope)
        )
    ).all():
        splits[tenant_id.int].append((number, percent))
    for key, split in splits.items():
        row = by_id.get(key)
        if row is not None:
            row.split = shares_of(tuple(split))

    for live in read_live_canaries(session):
        row = by_id.get(live.tenant_id.int)
        if row is not None:
            row.canary = fleet_canary(live, now)

    pending = (DeploymentStatus.STAGED, DeploymentStatus.AWAITING_EVALUATION)
    for tenant_id, status, number in read(
        select(Deployment.tenant_id, Deployment.status, ModelVersion.version)
        .outerjoin(ModelVersion, ModelVersion.id == Deployment.version_id)
        .where(Deployment.status.in_(pending), *_within(Deployment.tenant_id, scope))
        .order_by(ModelVersion.version)
    ).all():
        row = rows.get(tenant_id)
        if row is None:
            continue
        if status == DeploymentStatus.STAGED and number is not None:
            row.staged.append(number)
        elif status == DeploymentStatus.AWAITING_EVALUATION:
            row.awaiting_evaluation += 1

    _failed_events(session, rows, now - ATTENTION_WINDOW)
    _operations(session, rows, scope, now - ATTENTION_WINDOW)
    return Fleet(list(rows.values()), now)


def _within(
    column: InstrumentedAttribute[uuid.UUID], scope: list[uuid.UUID] | None
) -> list[ColumnElement[bool]]:
    """The condition that keeps a query to the tenants in scope (none: every tenant)."""
    return [] if scope is None else [column.in_(scope)]


def _failed_events(session: Session, rows: dict[uuid.UUID, FleetRow], since: datetime) -> None:
    """Failed job events per tenant: the tenant of the event's run, else the tenant it named."""
    names = {row.tenant: tenant_id for tenant_id, row in rows.items()}
    names |= {str(tenant_id): tenant_id for tenant_id in rows}
    query = (
        select(JobEvent.tenant_hint, FinetuningRun.tenant_id, func.count())
        .outerjoin(FinetuningRun, FinetuningRun.openai_job_id == JobEvent.openai_job_id)
        .where(JobEvent.state == EventState.FAILED, JobEvent.updated_at >= since)
        .group_by(JobEvent.tenant_hint, FinetuningRun.tenant_id)
    )
    for hint, run_tenant, count in session.connection().execute(query):
        tenant_id = run_tenant if run_tenant is not None else names.get(hint or "")
        if tenant_id in rows:
            rows[tenant_id].failed_events += int(count)


def _operations(
    session: Session,
    rows: dict[uuid.UUID, FleetRow],
    scope: list[uuid.UUID] | None,
    since: datetime,
) -> None:
    recent_failure = Operation.status.in_(FAILED_OPERATIONS) & (Operation.finished_at >= since)
    query = (
        select(Operation.tenant_id, Operation.status, func.count())
        .where(or_(Operation.status.in_(OPEN_OPERATIONS), recent_failure))
        .where(*_within(Operation.tenant_id, scope))
        .group_by(Operation.tenant_id, Operation.status)
    )
    for tenant_id, status, count in session.connection().execute(query):
        row = rows.get(tenant_id)
        if row is None:
            continue
        if status in OPEN_OPERATIONS:
            row.open_operations += int(count)
        else:
            row.failed_operations += int(count)
