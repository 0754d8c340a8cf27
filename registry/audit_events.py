"""The audit trail of what is not a traffic change: policy changes, pauses and resumes, refused
claims on job events. Each row is written in the caller's transaction, beside the change it
records, so the trail and the change commit together or not at all."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import clock
from registry.models import AuditEvent

POLICY_CHANGED = "policy"
TENANT_ADDED = "tenant_added"
PAUSED = "pause"
RESUMED = "resume"
EVENT_CLAIM_REFUSED = "event_claim_refused"


def record_audit_event(
    session: Session,
    tenant_id: uuid.UUID | None,
    action: str,
    *,
    actor: str,
    reason: str | None = None,
    subject: str | None = None,
    changes: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one row to the trail (flushed, not committed: the caller's change commits it)."""
    row = AuditEvent(
        tenant_id=tenant_id,
        action=action,
        subject=subject,
        actor=actor[:200],
        reason=reason,
        changes=changes or {},
        created_at=clock.now(),
    )
    session.add(row)
    session.flush()
    return row


def audit_events(session: Session, tenant_id: uuid.UUID, limit: int = 50) -> list[AuditEvent]:
    """The tenant's audit rows, newest first. Reads only."""
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant_id)
            .order_by(AuditEvent.id.desc())
            .limit(limit)
        )
    )


def refusals_of(session: Session, subjects: list[str]) -> dict[str, list[AuditEvent]]:
    """Refused claims by subject (`job <id>`), oldest first. Reads only; one statement."""
    found: dict[str, list[AuditEvent]] = {}
    if not subjects:
        return found
    for row in session.scalars(
        select(AuditEvent)
        .where(AuditEvent.action == EVENT_CLAIM_REFUSED, AuditEvent.subject.in_(subjects))
        .order_by(AuditEvent.id)
    ):
        found.setdefault(row.subject or "", []).append(row)
    return found
