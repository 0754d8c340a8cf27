"""Live canaries as the sweep and `ftdeploy status` see them: one read, then the decision.

A live canary is a deployment that is `active`, has auto-promote on and a step start, and whose
version is in production below 100%. Its analysis window is every outcome bucket that begins at
or after its current step began:

- the canary's counts are its own version's buckets in the window;
- the stable side's counts are the tenant's other production versions' buckets in the window.

Outcomes of versions that are not in production count on neither side, and an outcome a version
got before its current step began (while staged, deprecated, or at its previous step) lies in an
earlier bucket, outside the window. The price: the bucket in which the step began is left out,
so up to one bucket (`FTDEPLOY_OUTCOME_BUCKET_SECONDS`) of each step's outcomes goes unused.

`read_live_canaries` gathers every live canary with both sides' counts in TWO statements (the
canaries; the sums with GROUP BY over a join of deployments, versions and counters), however
many canaries there are; `assess` decides each with `analysis.decide` (`ruling`: the same
decision without its sentence, `analysis.rule`). They only read; none takes a lock.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    String,
    and_,
    bindparam,
    case,
    cast,
    func,
    select,
)
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from registry.canary.analysis import (
    CanaryPolicy,
    CanaryState,
    Counts,
    Decision,
    Ruling,
    decide,
    rule,
)
from registry.canary.checks import validate_policy
from registry.errors import InvalidInput
from registry.models import (
    Deployment,
    DeploymentPolicy,
    DeploymentStatus,
    Metric,
    ModelVersion,
    OutcomeCounter,
    Tenant,
    in_production,
)
from registry.tenants import DEFAULT_THRESHOLD

# The sums `analysis.decide` reads, per side.
_SUMS = ("requests", "successes", "score_sum", "score_count", "score_sq_sum")
_FLOATS = {"score_sum", "score_sq_sum"}


def _default(column: str) -> Any:
    """A policy column's default (for tenants created by the host SaaS without a policy row)."""
    default = DeploymentPolicy.__table__.c[column].default
    return getattr(default, "arg", None)


class LiveCanary(NamedTuple):
    """One live canary as read (a named tuple: one is made per canary per sweep and per fleet
    page, and a frozen dataclass's __init__ costs about four times as much)."""

    deployment_id: uuid.UUID
    tenant_id: uuid.UUID
    tenant: str  # slug
    version_id: uuid.UUID
    version: int
    traffic_percent: int
    step_started_at: datetime
    canary: Counts
    stable: Counts
    policy: CanaryPolicy | None  # None when the tenant's stored policy is not usable
    policy_error: str | None
    paused: bool = False  # the tenant is paused: the sweep leaves this canary alone


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the next sweep would do with one canary, and why (or why it cannot decide)."""

    canary: LiveCanary
    decision: Decision | None
    error: str | None  # set when decide() refused the policy or the counts

    @property
    def action(self) -> str:
        return self.decision.action.value if self.decision is not None else "error"

    @property
    def reason(self) -> str:
        return self.decision.reason if self.decision is not None else str(self.error)


def _live(one_tenant: bool) -> list[ColumnElement[bool]]:
    conditions = [
        Deployment.status == DeploymentStatus.ACTIVE,
        Deployment.auto_promote.is_(True),
        Deployment.step_started_at.is_not(None),
        ModelVersion.id == Deployment.version_id,
        in_production(ModelVersion.status),
        ModelVersion.traffic_percent < 100,
    ]
    if one_tenant:
        conditions.append(Deployment.tenant_id == bindparam("tenant_id"))
    return conditions


def live_conditions() -> list[ColumnElement[bool]]:
    """What makes a deployment and its version a live canary (the rows of `canary_columns`'s
    `Deployment` and `ModelVersion`), for statements that read live canaries with other rows
    (the fleet's tenants)."""
    return _live(False)


def canary_columns() -> list[ColumnElement[Any] | InstrumentedAttribute[Any]]:
    """The columns of one live canary without its counts, in the order `live_canary` reads
    them: its deployment, tenant, version and the tenant's policy (an outer join)."""
    policy = DeploymentPolicy
    return [
        Deployment.id,
        Deployment.tenant_id,
        Tenant.slug,
        ModelVersion.id.label("version_id"),
        ModelVersion.version,
        ModelVersion.traffic_percent,
        Deployment.step_started_at,
        Deployment.auto_promote_threshold,
        policy.auto_promote_threshold.label("policy_threshold"),
        policy.metric,
        policy.min_samples,
        policy.bake_seconds,
        # As text: parsed and checked once per distinct value (`_steps`), not once per row.
        cast(policy.canary_steps, String).label("canary_steps"),
        policy.progress_deadline_seconds,
        policy.auto_rollback,
        policy.paused,
    ]


# Both statements are built once per kind (every canary, or one tenant's, bound to the parameter
# `tenant_id`): building a statement and its cache key is Python work that each sweep and each
# fleet page would otherwise repeat, and it does not depend on the data.
@lru_cache(maxsize=2)
def canaries_query(one_tenant: bool = False) -> Select[*tuple[Any, ...]]:
    """Each live canary with its tenant and policy (no counts)."""
    policy = DeploymentPolicy
    return (
        select(*canary_columns())
        .select_from(Deployment)
        .join(ModelVersion, ModelVersion.id == Deployment.version_id)
        .join(Tenant, Tenant.id == Deployment.tenant_id)
        .outerjoin(policy, policy.tenant_id == Deployment.tenant_id)
        .where(*_live(one_tenant))
        .order_by(Tenant.slug, ModelVersion.version)
    )


@lru_cache(maxsize=2)
def counts_query(one_tenant: bool = False) -> Select[*tuple[Any, ...]]:
    """Per live canary (by deployment id): the sums of its own buckets in its window (c_<sum>)
    and of the other production versions' buckets in the same window (s_<sum>), in one GROUP BY
    over narrow rows. Canaries without any such bucket have no row (their counts are zero)."""
    counter, served = OutcomeCounter, aliased(ModelVersion)
    own = counter.version_id == Deployment.version_id
    sums = []
    for prefix, side in (("c", own), ("s", ~own)):
        for name in _SUMS:
            zero = 0.0 if name in _FLOATS else 0
            total: ColumnElement[Any] = func.sum(case((side, getattr(counter, name)), else_=zero))
            if name not in _FLOATS:
                # PostgreSQL sums integers as numeric, which arrives as a Decimal (slow to make and
                # to convert); the counters' sums fit a bigint.
                total = cast(total, BigInteger)
            sums.append(total.label(f"{prefix}_{name}"))
    return (
        select(Deployment.id, *sums)
        .select_from(Deployment)
        .join(ModelVersion, ModelVersion.id == Deployment.version_id)
        .join(
            counter,
            and_(
                counter.tenant_id == Deployment.tenant_id,
                counter.bucket_start >= Deployment.step_started_at,
            ),
        )
        # Only production versions' buckets count, on either side.
        .join(
            served,
            and_(served.id == counter.version_id, in_production(served.status)),
        )
        .where(*_live(one_tenant))
        .group_by(Deployment.id)
    )


def read_live_canaries(session: Session, tenant_id: uuid.UUID | None = None) -> list[LiveCanary]:
    """Every live canary (of one tenant, or all) with both sides' counts: two statements,
    whatever the number of canaries, merged here by deployment.

    On PostgreSQL, called first in its transaction, the two read one snapshot (REPEATABLE READ),
    so counts and state agree; SQLite's read transaction is a snapshot already. (Had a step moved
    in between anyway, the sweep's re-check under the lock would skip the stale decision.) Two
    plain statements rather than one: a grouped subquery joined back to the canaries was
    re-aggregated once per canary when the planner's statistics were stale (quadratic), and one
    GROUP BY over the joined wide rows sorted them on disk at 10,000 canaries.
    """
    if session.get_bind().dialect.name == "postgresql" and not session.in_transaction():
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    # Plain rows through the session's connection, fetched at once: the ORM's result machinery
    # adds a third per row, and iterating a result fetches row by row; the fleet page and the
    # sweep read one row per live canary.
    one, params = (False, {}) if tenant_id is None else (True, {"tenant_id": tenant_id})
    canaries = session.connection().execute(canaries_query(one), params).all()
    counts = read_counts(session.connection(), tenant_id)
    return [live_canary(row, counts.get(row[0].int)) for row in canaries]


def read_counts(connection: Connection, tenant_id: uuid.UUID | None = None) -> dict[int, Any]:
    """The rows of `counts_query` (of one tenant, or all) by their deployment id's integer (a
    UUID's hash and equality are Python code), for `live_canary`: one statement."""
    one, params = (False, {}) if tenant_id is None else (True, {"tenant_id": tenant_id})
    found = connection.execute(counts_query(one), params).all()
    return {row[0].int: row for row in found}


def _sides(sums: Any) -> tuple[Counts, Counts]:
    """The canary's and the stable side's counts from a row of `counts_query` (None: no row).
    Each sum is over at least one counter (a group has one), so none is NULL; each is converted
    to the type `analysis` expects whatever the database's driver returned."""
    if sums is None:
        return _NO_COUNTS, _NO_COUNTS
    # After the deployment's id: the canary's sums, then the stable side's (the order of _SUMS).
    _, requests, successes, score_sum, score_count, score_sq_sum, *stable = sums
    s_requests, s_successes, s_score_sum, s_score_count, s_score_sq_sum = stable
    return (
        Counts(int(requests), int(successes), float(score_sum), int(score_count),
               float(score_sq_sum)),
        Counts(int(s_requests), int(s_successes), float(s_score_sum), int(s_score_count),
               float(s_score_sq_sum)),
    )  # fmt: skip


_NO_COUNTS = Counts()


def _or_default(value: Any, column: str) -> Any:
    return _default(column) if value is None else value


def live_canary(row: Sequence[Any], sums: Any) -> LiveCanary:
    """A live canary from the values of `canary_columns` (in their order) and its row of
    `counts_query` (None: no counts yet)."""
    # By position (a name lookup per column costs more than the rest of this function).
    (
        deployment_id, tenant_id, slug, version_id, version, traffic_percent, step_started_at,
        threshold, policy_threshold, metric, min_samples, bake_seconds, steps, deadline_seconds,
        auto_rollback, paused,
    ) = row  # fmt: skip
    policy, error = _policy(
        threshold, policy_threshold, metric, min_samples, bake_seconds, steps, deadline_seconds,
        auto_rollback,
    )  # fmt: skip
    canary, stable = _sides(sums)
    return LiveCanary(
        deployment_id, tenant_id, slug, version_id, version, traffic_percent, step_started_at,
        canary, stable, policy, error, bool(paused),
    )  # fmt: skip


@lru_cache(maxsize=1024)  # a fleet shares few policies: each is resolved once, not per canary
def _policy(
    threshold: Any,
    policy_threshold: Any,
    metric: Any,
    min_samples: Any,
    bake_seconds: Any,
    steps: str | None,
    deadline_seconds: Any,
    auto_rollback: Any,
) -> tuple[CanaryPolicy | None, str | None]:
    """A canary's policy from its stored columns (defaults for those missing), or why it cannot
    be used."""
    if threshold is None:
        threshold = policy_threshold
    try:
        policy = canary_policy(
            DEFAULT_THRESHOLD if threshold is None else threshold,
            _or_default(metric, "metric"),
            _or_default(min_samples, "min_samples"),
            _or_default(bake_seconds, "bake_seconds"),
            _steps(steps),
            _or_default(deadline_seconds, "progress_deadline_seconds"),
            _or_default(auto_rollback, "auto_rollback"),
        )
    except InvalidInput as refused:
        return None, f"the tenant's policy cannot be used: {refused}"
    return policy, None


@lru_cache(maxsize=1024)  # a fleet shares few policies
def _steps(text: str | None) -> tuple[int, ...]:
    """The stored steps (JSON, as text), or one jump to 100 when there are none."""
    stored = None if text is None else json.loads(text)
    if not stored:
        return (100,)
    if not isinstance(stored, list) or not all(type(step) is int for step in stored):
        raise InvalidInput("steps", f"{stored!r} is not a list of whole numbers")
    return tuple(stored)


@lru_cache(maxsize=1024)
def canary_policy(
    threshold: float,
    metric: str,
    min_samples: int,
    bake_seconds: float,
    steps: tuple[int, ...],
    deadline_seconds: float,
    auto_rollback: bool,
) -> CanaryPolicy:
    """The analysis policy of one canary, validated: the threshold its deployment was made with
    (else the tenant's, else 0.95) and the tenant's current policy for the rest; steps are the
    policy's, or one jump to 100 when it has none. Raises InvalidInput when the stored values do
    not fit together (say, a deadline within the bake time). Cached: a fleet shares few policies,
    and the sweep builds one per canary."""
    if metric not in _METRICS:
        raise InvalidInput("metric", f"{metric!r} is not one of {', '.join(Metric)}")
    policy = CanaryPolicy(
        metric=Metric(metric),
        threshold=float(threshold),
        min_samples=int(min_samples),
        bake_seconds=float(bake_seconds),
        steps=steps,
        deadline_seconds=float(deadline_seconds),
        auto_rollback=bool(auto_rollback),
    )
    validate_policy(policy)
    return policy


_METRICS = frozenset(Metric)


def assess(canaries: Iterable[LiveCanary], now: datetime) -> list[Assessment]:
    """Decide each canary as of `now`. Pure given its inputs: no database, no clock."""
    assessments = []
    for canary in canaries:
        if canary.policy is None:
            assessments.append(Assessment(canary, None, canary.policy_error))
            continue
        try:
            assessments.append(Assessment(canary, decide(_state(canary), canary.policy, now), None))
        except InvalidInput as refused:
            assessments.append(Assessment(canary, None, f"cannot decide: {refused}"))
    return assessments


def ruling(canary: LiveCanary, now: datetime) -> Ruling | None:
    """`assess` of one canary without the sentence (None: it cannot be decided), for lists that
    show only what the next sweep will do. Pure."""
    if canary.policy is None:
        return None
    try:
        return rule(_state(canary), canary.policy, now)
    except InvalidInput:
        return None


def _state(canary: LiveCanary) -> CanaryState:
    return CanaryState(canary.traffic_percent, canary.step_started_at, canary.canary, canary.stable)


def samples(canary: LiveCanary) -> int:
    """The samples that count toward min_samples under the canary's metric."""
    if canary.policy is not None and canary.policy.metric == Metric.SCORE:
        return canary.canary.score_count
    return canary.canary.requests
