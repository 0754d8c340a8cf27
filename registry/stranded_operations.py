"""Operations that nothing would otherwise end: beat's reconciler (`ftdeploy.reconcile_events`)
calls `reconcile` each period, as it does for job events (`registry.jobs.events.reconcile`).

- Still queued past their expiry (no worker ran them in time: the worker down, the message
  lost, the database away for longer than the task's retries): they end `expired`, with the
  reason, and are told of.
- Never handed to the broker (it was down when the door queued them, or the door died between
  its commit and its send) and older than the grace period: sent again.
- Handed to the broker but still queued long after (`stalled_after`: longer than a task time
  limit plus a retry countdown plus the broker's redelivery): the message was lost (a worker
  killed between pop and ack on Redis); sent again, once per period.

Re-sending is safe: a worker that finds the operation ended does nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from registry import clock, operations
from registry.models import Operation, OperationStatus

BATCH = 1000


@dataclass(frozen=True)
class Reconciled:
    expired: list[uuid.UUID]
    unsent: list[uuid.UUID]
    stalled: list[uuid.UUID]


def reconcile(
    session: Session,
    *,
    grace: timedelta,
    stalled_after: timedelta,
    now: datetime | None = None,
) -> Reconciled:
    """Expire, and send again after the commit, what the module docstring lists, in the
    caller's transaction. Rows a worker holds (running) are skipped, not waited for. Safe to
    repeat and to run beside itself."""
    now = now or clock.now()
    expired = _expire_overdue(session, now)
    unsent = _queued(
        session,
        Operation.enqueued_at.is_(None),
        Operation.created_at < now - grace,
    )
    stalled = _queued(
        session,
        Operation.enqueued_at.is_not(None),
        Operation.enqueued_at < now - stalled_after,
    )
    if stalled:
        # Touched now: each is sent again at most once per `stalled_after`.
        session.execute(
            update(Operation)
            .where(Operation.id.in_([o.id for o in stalled]))
            .values(enqueued_at=now)
        )
    for operation in unsent + stalled:
        operations.send(session, operation)
    return Reconciled(expired, [o.id for o in unsent], [o.id for o in stalled])


def _expire_overdue(session: Session, now: datetime) -> list[uuid.UUID]:
    ttl = operations.default_ttl()
    overdue = _queued(
        session,
        or_(
            Operation.expires_at < now,
            and_(Operation.expires_at.is_(None), Operation.created_at < now - ttl),
        ),
    )
    for operation in overdue:
        operations.expire_operation(session, operation, now)
    return [o.id for o in overdue]


def _queued(session: Session, *conditions: object) -> list[Operation]:
    return list(
        session.scalars(
            select(Operation)
            .where(Operation.status == OperationStatus.QUEUED, *conditions)  # type: ignore[arg-type]
            .order_by(Operation.created_at)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
    )
