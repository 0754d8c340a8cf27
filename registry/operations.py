"""Operators' promote and rollback, queued for the worker: queued → running → succeeded | failed."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import messages
from registry.errors import FtdeployError, InvalidInput, OperationNotFound
from registry.models import Operation, OperationKind, OperationStatus, utcnow
from registry.tenants import find_tenant
from registry.versions import check_percent, check_version_number, find_version, promote, rollback


def queue_operation(
    session: Session,
    tenant_ref: str,
    kind: str,
    *,
    version: object = None,
    traffic_percent: object = None,
    actor: str = "operator",
) -> Operation:
    """Record an operation to run. Input is checked now (tenant, version of this tenant, percent),
    so a bad request is refused at once with nothing queued."""
    tenant = find_tenant(session, tenant_ref)
    if kind == OperationKind.PROMOTE:
        number = check_version_number(version)
        percent = check_percent(100 if traffic_percent is None else traffic_percent)
        find_version(session, tenant, number)
    elif kind == OperationKind.ROLLBACK:
        number, percent = None, None
    else:
        raise InvalidInput("operation", f"{kind!r} is not promote or rollback")
    operation = Operation(
        tenant_id=tenant.id, kind=kind, version=number, traffic_percent=percent, actor=actor
    )
    session.add(operation)
    session.flush()
    return operation


def submit_operation(
    session: Session,
    tenant_ref: str,
    kind: str,
    *,
    version: object = None,
    traffic_percent: object = None,
    actor: str = "operator",
) -> Operation:
    """Queue an operation (`queue_operation`) and ask the worker to run it after the commit.
    A message that is never sent leaves the operation queued (visible in `activity`)."""
    operation = queue_operation(
        session, tenant_ref, kind, version=version, traffic_percent=traffic_percent, actor=actor
    )
    arguments: dict[str, Any] = {"tenant": tenant_ref, "operation_id": str(operation.id)}
    if kind == OperationKind.PROMOTE:
        task = messages.PROMOTE
        arguments.update(version=operation.version, traffic_percent=operation.traffic_percent)
    else:
        task = messages.ROLLBACK
    messages.send_after_commit(session, task, kwargs=arguments)
    return operation


def get_operation(session: Session, operation_id: str | uuid.UUID) -> Operation:
    try:
        key = operation_id if isinstance(operation_id, uuid.UUID) else uuid.UUID(operation_id)
    except (ValueError, TypeError, AttributeError):  # a number or a list from a message, say
        raise InvalidInput("operation id", f"{operation_id!r} is not an id") from None
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
    operation.started_at = utcnow()
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
                )
            else:
                change = rollback(session, operation.tenant_id, actor=actor)
    except FtdeployError as error:
        if error.retryable:
            raise
        operation.status = OperationStatus.FAILED
        operation.error = str(error)
    else:
        operation.status = OperationStatus.SUCCEEDED
        operation.result = _describe(change)
    operation.finished_at = utcnow()
    session.flush()
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
    operation.finished_at = utcnow()
    session.flush()
    return True


def _describe(change: Any) -> dict[str, Any]:
    return {
        "action": change.action,
        "version": change.version,
        "before": {str(k): v for k, v in sorted(change.before.items())},
        "after": {str(k): v for k, v in sorted(change.after.items())},
        "reason": change.reason,
    }
