"""How an operation ends: each final status with its reason, told once; expiry, cancelling,
and failing one that cannot be run."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import clock, validation
from registry.errors import OperationNotCancellable, OperationNotFound
from registry.models import FINAL_OPERATION_STATUSES, Operation, OperationStatus
from registry.notify import notices
from registry.operations.queueing import default_ttl, get_operation

MAX_ERROR = 2000


def lock_operation(session: Session, operation_id: str | uuid.UUID) -> Operation:
    operation = get_operation(session, operation_id)
    return session.scalars(
        select(Operation)
        .where(Operation.id == operation.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def finish(
    session: Session, operation: Operation, status: OperationStatus, error: str | None
) -> Operation:
    """Give the operation its final status and reason, and tell of it (once per status)."""
    operation.status = status
    operation.error = error[:MAX_ERROR] if error is not None else None
    operation.finished_at = clock.now()
    session.flush()
    notices.operation_finished(session, operation)
    return operation


def expiry(operation: Operation) -> datetime:
    """When the operation expires (rows from before its time to live: their queueing time
    plus today's FTDEPLOY_OPERATION_TTL_SECONDS)."""
    return operation.expires_at or operation.created_at + default_ttl()


def expired_reason(operation: Operation, now: datetime) -> str:
    lived = (expiry(operation) - operation.created_at).total_seconds()
    waited = (now - operation.created_at).total_seconds()
    return (
        f"expired: not started within its time to live ({lived:g} s; queued {waited:.0f} s "
        "ago), so it was not applied to a split that may have moved on; queue it again"
    )


def cancel_operation(
    session: Session, operation_id: str | uuid.UUID, *, actor: str, reason: str | None = None
) -> Operation:
    """Cancel a queued operation: it ends `cancelled`, with who cancelled it and why, told as
    the other final statuses are. Raises OperationNotFound, InvalidInput, and
    OperationNotCancellable (nothing changed) for one that a worker is running (its row is
    locked: not waited for) or that has ended. A message still in the queue then finds it
    ended and does nothing."""
    operation = get_operation(session, operation_id)
    locked = session.scalars(
        select(Operation)
        .where(Operation.id == operation.id)
        # A worker holds the row while it runs the operation: that is "running", not a wait.
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if locked is None:
        raise OperationNotCancellable(str(operation.id), OperationStatus.RUNNING)
    if locked.status != OperationStatus.QUEUED:
        raise OperationNotCancellable(str(locked.id), locked.status)
    why = validation.reason(reason)
    locked.result = {"cancelled_by": actor, "reason": why}
    text = f"cancelled by {actor}" + (f": {why}" if why else "")
    return finish(session, locked, OperationStatus.CANCELLED, text)


def fail_operation(session: Session, operation_id: str | uuid.UUID, reason: str) -> bool:
    """End an operation that cannot be run (its task gave up) as failed with `reason`. Returns
    False when there is no such operation or it had already ended. Raises InvalidInput for a
    malformed id."""
    try:
        operation = lock_operation(session, operation_id)
    except OperationNotFound:
        return False
    if operation.status in FINAL_OPERATION_STATUSES:
        return False
    finish(session, operation, OperationStatus.FAILED, reason)
    return True


def expire_operation(session: Session, operation: Operation, now: datetime) -> None:
    """End a queued operation (its row locked by the caller) as expired, with the reason."""
    finish(session, operation, OperationStatus.EXPIRED, expired_reason(operation, now))
