"""What operators read: the audit trail of traffic changes, and every other outcome (deployment
decisions, operations, job events) with its reason, so nothing is only in a log line."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from registry.errors import InvalidInput
from registry.models import (
    Deployment,
    EventState,
    FinetuningRun,
    JobEvent,
    ModelVersion,
    Operation,
    Tenant,
    TrafficEvent,
)
from registry.tenants import find_tenant


def history(session: Session, tenant_ref: str | uuid.UUID, limit: int = 200) -> list[TrafficEvent]:
    """The tenant's traffic changes, newest first. Reads only. Raises TenantNotFound, and
    InvalidInput for a limit that is not a whole number >= 1."""
    # Checked here: PostgreSQL rejects a negative LIMIT as a database error, SQLite ignores it.
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInput("limit", f"{limit!r} is not a whole number >= 1")
    tenant = find_tenant(session, tenant_ref)
    return list(
        session.scalars(
            select(TrafficEvent)
            .where(TrafficEvent.tenant_id == tenant.id)
            .order_by(TrafficEvent.id.desc())
            .limit(limit)
        )
    )


@dataclass(frozen=True)
class Activity:
    """One outcome an operator may need to see besides traffic changes: a deployment decision
    (rejected, awaiting evaluation, …), a queued operation, or a job event, with its reason."""

    at: datetime
    kind: str  # "deployment" | "operation" | "event"
    subject: str
    status: str
    detail: str | None


def activity(session: Session, tenant_ref: str | uuid.UUID, limit: int = 50) -> list[Activity]:
    """The tenant's deployments, operations and job events, newest first. Reads only.

    Events count as the tenant's when their run belongs to it or the event named it, so a
    refused event (say, tenants disagree) shows under the tenant it claimed.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInput("limit", f"{limit!r} is not a whole number >= 1")
    tenant = find_tenant(session, tenant_ref)
    rows: list[Activity] = []
    for deployment, job_id, number in session.execute(
        select(Deployment, FinetuningRun.openai_job_id, ModelVersion.version)
        .join(FinetuningRun, FinetuningRun.id == Deployment.run_id)
        .outerjoin(ModelVersion, ModelVersion.id == Deployment.version_id)
        .where(Deployment.tenant_id == tenant.id)
        .order_by(Deployment.updated_at.desc())
        .limit(limit)
    ):
        subject = f"job {job_id}" + (f" -> v{number}" if number else "")
        rows.append(
            Activity(
                deployment.updated_at, "deployment", subject, deployment.status, deployment.reason
            )
        )
    for operation in session.scalars(
        select(Operation)
        .where(Operation.tenant_id == tenant.id)
        .order_by(Operation.created_at.desc())
        .limit(limit)
    ):
        subject = (
            f"promote v{operation.version} to {operation.traffic_percent}%"
            if operation.kind == "promote"
            else "rollback"
        )
        detail = operation.error or (operation.result or {}).get("reason")
        rows.append(
            Activity(
                operation.finished_at or operation.created_at,
                "operation",
                subject,
                operation.status,
                detail,
            )
        )
    own_jobs = select(FinetuningRun.openai_job_id).where(FinetuningRun.tenant_id == tenant.id)
    for job_event in session.scalars(
        select(JobEvent)
        .where(
            or_(
                JobEvent.tenant_hint.in_([tenant.slug, str(tenant.id)]),
                JobEvent.openai_job_id.in_(own_jobs),
            )
        )
        .order_by(JobEvent.updated_at.desc())
        .limit(limit)
    ):
        rows.append(
            Activity(
                job_event.updated_at,
                "event",
                f"job {job_event.openai_job_id}",
                job_event.state,
                job_event.outcome,
            )
        )
    rows.sort(key=lambda row: row.at, reverse=True)
    return rows[:limit]


def job_events(
    session: Session,
    state: str | None = None,
    limit: int = 50,
    tenants: Sequence[Tenant] | None = None,
    since: datetime | None = None,
) -> list[JobEvent]:
    """Job events of every tenant (also those whose tenant is unknown), newest first; with
    `tenants`, only theirs (named by the event, or of one of their runs: as in `activity`);
    with `since`, only those updated at or after it."""
    if state is not None and state not in set(EventState):
        allowed = ", ".join(s.value for s in EventState)
        raise InvalidInput("state", f"{state!r} is not one of {allowed}")
    query = select(JobEvent).order_by(JobEvent.updated_at.desc()).limit(limit)
    if state is not None:
        query = query.where(JobEvent.state == state)
    if since is not None:
        query = query.where(JobEvent.updated_at >= since)
    if tenants is not None:
        names = [t.slug for t in tenants] + [str(t.id) for t in tenants]
        own_jobs = select(FinetuningRun.openai_job_id).where(
            FinetuningRun.tenant_id.in_([t.id for t in tenants])
        )
        query = query.where(
            or_(JobEvent.tenant_hint.in_(names), JobEvent.openai_job_id.in_(own_jobs))
        )
    return list(session.scalars(query))
