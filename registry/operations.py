"""Operators' promote and rollback, queued for the worker: queued → running → succeeded | failed."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import clock, messages, validation
from registry.errors import FtdeployError, InvalidInput, OperationNotFound
from registry.models import Operation, OperationKind, OperationStatus
from registry.notify import notices
from registry.tenants import find_tenant
from registry.versions import find_version, promote, rollback

MAX_REASON = 500


def queue_operation(
    session: Session,
    tenant_ref: str | uuid.UUID,
    kind: str,
    *,
    version: object = None,
    traffic_percent: object = None,
    actor: str = "operator",
    reason: str | None = None,
) -> Operation:
    """Record an operation to run. Input is checked now (tenant, version of this tenant, percent,
    reason), so a bad request is refused at once with nothing queued. The reason, when given, is
    the audit trail's reason when the operation runs."""
    tenant = find_tenant(session, tenant_ref)
    if kind == OperationKind.PROMOTE:
        number = validation.version_number(version)
        percent = validation.traffic_percent(100 if traffic_percent is None else traffic_percent)
        find_version(session, tenant, number)
    elif kind == OperationKind.ROLLBACK:
        number, percent = None, None
    else:
        raise InvalidInput("operation", f"{kind!r} is not promote or rollback")
    operation = Operation(
        tenant_id=tenant.id,
        kind=kind,
        version=number,
        traffic_percent=percent,
        actor=actor,
        reason=check_reason(reason),
    )
    session.add(operation)
    session.flush()
    return operation


def check_reason(reason: object) -> str | None:
    """An operator's reason: at most 500 characters, no NUL; blank means none given."""
    if reason is None:
        return None
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise InvalidInput("reason", f"must be text of at most {MAX_REASON} characters")
    if "\x00" in reason:
        raise InvalidInput("reason", "contains a NUL character")
    return reason.strip() or None


def submit_operation(
    session: Session,
    tenant_ref: str | uuid.UUID,
    kind: str,
    *,
    version: object = None,
    traffic_percent: object = None,
    actor: str = "operator",
    reason: str | None = None,
) -> Operation:
    """Queue an operation (`queue_operation`) and ask the worker to run it after the commit.
    A message that is never sent leaves the operation queued (visible in `activity`)."""
    operation = queue_operation(
        session,
        tenant_ref,
        kind,
        version=version,
        traffic_percent=traffic_percent,
        actor=actor,
        reason=reason,
    )
    arguments: dict[str, Any] = {"tenant": str(tenant_ref), "operation_id": str(operation.id)}
    if kind == OperationKind.PROMOTE:
        task = messages.PROMOTE
        arguments.update(version=operation.version, traffic_percent=operation.traffic_percent)
    else:
        task = messages.ROLLBACK
    messages.send_after_commit(session, task, kwargs=arguments)
    return operation


def get_operation(session: Session, operation_id: str | uuid.UUID) -> Operation:
    # A number or a list from a message, say, is refused as not an id.
    key = validation.uuid_id(operation_id, "operation id")
    operation = session.get(Operation, key, populate_existing=True)
    if operation is None:
        raise OperationNotFound(str(operation_id))
    return operation


def run_operation(session: Session, operation_id: str | uuid.UUID) -> Operation:
    """Run a queued operation through the registry, in the caller's transaction.

    The operation's status and the traffic change commit together, so a redelivered message finds
    the operation finished and does nothing (idempotent). A domain error (say, nothing to roll
    back) marks it failed with the message; the change itself is undone through a savepoint.
    """
    operation = get_operation(session, operation_id)
    operation = session.scalars(
        select(Operation).where(Operation.id == operation.id).with_for_update()
    ).one()
    if operation.status in (OperationStatus.SUCCEEDED, OperationStatus.FAILED):
        return operation
    operation.status = OperationStatus.RUNNING
    operation.started_at = clock.now()
    actor = f"operator:{operation.actor}"
    try:
        with session.begin_nested():
            if operation.kind == OperationKind.PROMOTE:
                change = promote(
                    session,
                    operation.tenant_id,
                    operation.version or 0,
                    operation.traffic_percent or 100,
                    actor=actor,
                    reason=operation.reason,
                )
            else:
                change = rollback(
                    session, operation.tenant_id, actor=actor, reason=operation.reason
                )
    except FtdeployError as error:
        if error.retryable:
            raise
        operation.status = OperationStatus.FAILED
        operation.error = str(error)
    else:
        operation.status = OperationStatus.SUCCEEDED
        operation.result = _describe(change)
    operation.finished_at = clock.now()
    session.flush()
    notices.operation_finished(session, operation)
    return operation


def fail_operation(session: Session, operation_id: str | uuid.UUID, reason: str) -> bool:
    """End an operation that cannot be run (its task gave up) as failed with `reason`. Returns
    False when there is no such operation or it had already ended. Raises InvalidInput for a
    malformed id."""
    try:
        operation = get_operation(session, operation_id)
    except OperationNotFound:
        return False
    if operation.status in (OperationStatus.SUCCEEDED, OperationStatus.FAILED):
        return False
    operation.status = OperationStatus.FAILED
    operation.error = reason[:2000]
    operation.finished_at = clock.now()
    session.flush()
    notices.operation_finished(session, operation)
    return True


def _describe(change: Any) -> dict[str, Any]:
    return {
        "action": change.action,
        "version": change.version,
        "before": {str(k): v for k, v in sorted(change.before.items())},
        "after": {str(k): v for k, v in sorted(change.after.items())},
        "reason": change.reason,
    }
