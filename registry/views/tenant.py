"""One tenant as its dashboard page shows it: versions, the split now and over time, the live
canary explained, the audit trail, deployments, operations and job events with their reasons,
and the policy. A fixed number of statements, however long the tenant's history: the audit
trail is read newest first up to `CHART_CHANGES` (the chart) of which `HISTORY_ROWS` are listed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import String, cast, func, select
from sqlalchemy.orm import Session

from registry import audit
from registry.audit import Activity
from registry.canary.canaries import assess, read_live_canaries
from registry.models import (
    Deployment,
    DeploymentPolicy,
    DeploymentStatus,
    ModelVersion,
    Operation,
    OperationStatus,
    Tenant,
    TrafficEvent,
)
from registry.views.canary import CanaryPanel, panel
from registry.views.splits import Share, shares

CHART_CHANGES = 500  # the chart covers the tenant's latest 500 traffic changes
HISTORY_ROWS = 50
ACTIVITY_ROWS = 30


@dataclass(frozen=True)
class VersionRow:
    version: int
    name: str
    model_id: str
    status: str
    traffic_percent: int
    metrics: dict[str, Any]
    created_at: datetime
    deployed_at: datetime | None
    rolled_back_at: datetime | None


@dataclass(frozen=True)
class Change:
    """One audit event: the split before and after, who, why."""

    id: int
    at: datetime
    action: str
    version: int | None
    actor: str
    reason: str
    before: Sequence[Share]
    after: Sequence[Share]


@dataclass(frozen=True)
class Interval:
    """The split that served from `start` to `end` (the chart's segments)."""

    start: datetime
    end: datetime
    split: Sequence[Share]


@dataclass(frozen=True)
class OperationRow:
    id: uuid.UUID
    kind: str
    version: int | None
    traffic_percent: int | None
    status: str
    actor: str
    reason: str | None
    error: str | None
    outcome: str | None  # the registry's reason for what it did
    created_at: datetime
    finished_at: datetime | None

    @property
    def final(self) -> bool:
        return self.status not in (OperationStatus.QUEUED, OperationStatus.RUNNING)

    @property
    def subject(self) -> str:
        if self.kind == "promote":
            return f"promote v{self.version} to {self.traffic_percent}%"
        return "rollback"


@dataclass(frozen=True)
class TenantPage:
    tenant: str
    tenant_id: uuid.UUID
    policy: list[tuple[str, str]]
    strategy: str
    paused: bool  # auto-promotion paused (`ftdeploy tenant pause`)
    paused_reason: str | None
    versions: list[VersionRow]
    split: list[Share]
    canary: CanaryPanel | None
    staged: list[int]  # blue-green versions waiting for their switch
    changes: list[Change]  # newest first, at most HISTORY_ROWS
    total_changes: int
    chart: list[Interval]  # oldest first
    operations: list[OperationRow]  # newest first
    activity: list[Activity]  # deployments, operations, job events, newest first
    as_of: datetime


def _policy(policy: DeploymentPolicy | None) -> tuple[str, list[tuple[str, str]]]:
    """The policy as label/value pairs; a tenant without a policy row has the defaults."""

    def value(column: str) -> Any:
        if policy is not None:
            return getattr(policy, column)
        default = DeploymentPolicy.__table__.c[column].default
        return getattr(default, "arg", None)

    def seconds(column: str) -> str:
        return f"{value(column):g} s"

    steps = value("canary_steps")
    threshold = value("auto_promote_threshold")
    rows = [
        ("strategy", str(value("strategy"))),
        ("canary percent", f"{value('canary_percent')}%"),
        ("steps", " → ".join(f"{s}%" for s in steps) if steps else "one jump to 100%"),
        ("auto-promote", "on" if value("auto_promote") else "off"),
        ("metric", str(value("metric")).replace("_", " ")),
        ("threshold", "0.95 (default)" if threshold is None else f"{threshold:g}"),
        ("minimum samples", str(value("min_samples"))),
        ("bake time", seconds("bake_seconds")),
        ("progress deadline", seconds("progress_deadline_seconds")),
        ("auto-rollback", "on" if value("auto_rollback") else "off"),
        ("evaluation required", "yes" if value("require_evaluation") else "no"),
        ("deprecated versions kept", str(value("keep_deprecated"))),
    ]
    return str(value("strategy")), rows


class _Event(NamedTuple):
    """A row of the tenant's audit trail as the page reads it: its columns, the splits as the
    database spells them (JSON text, parsed once per distinct value by `_shares`)."""

    id: int
    created_at: datetime
    action: str
    version: int | None
    actor: str
    reason: str
    split_before: str
    split_after: str


def _chart(
    events: Sequence[_Event], tenant: Tenant, split: list[Share], now: datetime
) -> list[Interval]:
    if not events:
        return [Interval(tenant.created_at, now, split)]
    oldest_first = list(reversed(events))
    ends = [e.created_at for e in oldest_first[1:]] + [now]
    return [
        Interval(e.created_at, max(end, e.created_at), _shares(e.split_after))
        for e, end in zip(oldest_first, ends, strict=True)
    ]


@lru_cache(maxsize=4096)  # a history has few distinct splits
def _shares(split: str) -> tuple[Share, ...]:
    """`shares` of a split stored as JSON, as its text (shared between events: a tuple)."""
    return tuple(shares(json.loads(split)))


def tenant_page(session: Session, tenant: Tenant, now: datetime) -> TenantPage:
    """The page of `tenant` (already found, and visible to the caller). Reads only, no lock;
    twelve statements whatever the number of versions, changes or events."""
    stored_policy = session.get(DeploymentPolicy, tenant.id)
    strategy, policy = _policy(stored_policy)
    paused = stored_policy is not None and bool(stored_policy.paused)
    versions = [
        VersionRow(
            v.version,
            v.name,
            v.model_id,
            v.status,
            v.traffic_percent,
            dict(v.metrics or {}),
            v.created_at,
            v.deployed_at,
            v.rolled_back_at,
        )
        for v in session.scalars(
            select(ModelVersion)
            .where(ModelVersion.tenant_id == tenant.id)
            .order_by(ModelVersion.version.desc())
        )
    ]
    split = shares({v.version: v.traffic_percent for v in versions if v.traffic_percent > 0})
    assessed = assess(read_live_canaries(session, tenant.id), now)
    staged = list(
        session.scalars(
            select(ModelVersion.version)
            .join(Deployment, Deployment.version_id == ModelVersion.id)
            .where(Deployment.tenant_id == tenant.id, Deployment.status == DeploymentStatus.STAGED)
            .order_by(ModelVersion.version)
        )
    )
    # Columns rather than entities, and the splits as text: the chart reads hundreds of events
    # and needs only their times and splits, which repeat.
    event = TrafficEvent
    events = [
        _Event(*row)
        for row in session.execute(
            select(
                event.id,
                event.created_at,
                event.action,
                event.version,
                event.actor,
                event.reason,
                cast(event.split_before, String),
                cast(event.split_after, String),
            )
            .where(event.tenant_id == tenant.id)
            .order_by(event.id.desc())
            .limit(CHART_CHANGES)
        )
    ]
    total = int(
        session.scalar(
            select(func.count())
            .select_from(TrafficEvent)
            .where(TrafficEvent.tenant_id == tenant.id)
        )
        or 0
    )
    operations = [
        _operation_row(o)
        for o in session.scalars(
            select(Operation)
            .where(Operation.tenant_id == tenant.id)
            .order_by(Operation.created_at.desc())
            .limit(HISTORY_ROWS)
        )
    ]
    return TenantPage(
        tenant=tenant.slug,
        tenant_id=tenant.id,
        policy=policy,
        strategy=strategy,
        paused=paused,
        paused_reason=stored_policy.paused_reason if paused and stored_policy else None,
        versions=versions,
        split=split,
        canary=panel(assessed[0], now) if assessed else None,
        staged=staged,
        changes=[_change(e) for e in events[:HISTORY_ROWS]],
        total_changes=total,
        chart=_chart(events, tenant, split, now),
        operations=operations,
        activity=audit.activity(session, tenant.id, ACTIVITY_ROWS),
        as_of=now,
    )


def _change(e: _Event) -> Change:
    return Change(
        e.id,
        e.created_at,
        e.action,
        e.version,
        e.actor,
        e.reason,
        _shares(e.split_before),
        _shares(e.split_after),
    )


def operation(session: Session, tenant: Tenant, operation_id: uuid.UUID) -> OperationRow | None:
    """One of the tenant's operations (None when it is not the tenant's, or does not exist)."""
    o = session.get(Operation, operation_id, populate_existing=True)
    if o is None or o.tenant_id != tenant.id:
        return None
    return _operation_row(o)


def _operation_row(o: Operation) -> OperationRow:
    outcome = (o.result or {}).get("reason")
    return OperationRow(
        o.id,
        o.kind,
        o.version,
        o.traffic_percent,
        o.status,
        o.actor,
        o.reason,
        o.error,
        outcome,
        o.created_at,
        o.finished_at,
    )
