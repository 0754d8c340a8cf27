"""Running a queued operation under the tenant's lock: refused when its message disagrees,
expired, stale when the split moved since it was queued (unless forced), else applied."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import clock, traffic, validation
from registry.db import lock_tenant
from registry.errors import FtdeployError, InvalidInput, TenantNotFound
from registry.models import (
    FINAL_OPERATION_STATUSES,
    Operation,
    OperationKind,
    OperationStatus,
    TrafficEvent,
)
from registry.operations.ending import expired_reason, expiry, finish, lock_operation
from registry.tenants import find_tenant
from registry.versions import current_split, promote, rollback


@dataclass(frozen=True)
class Asked:
    """What a task's message says about the operation it names; the stored operation must agree
    with every part, or it is refused (a message naming tenant A and tenant B's operation)."""

    kind: str
    tenant: object
    version: object = None
    traffic_percent: object = None


def run_operation(
    session: Session, operation_id: str | uuid.UUID, *, asked: Asked | None = None
) -> Operation:
    """Run a queued operation through the registry, in the caller's transaction.

    Locks the operation's row, then (deciding) the tenant. In order: an operation that has
    ended is returned as it is (a redelivered message: idempotent); one whose message (`asked`)
    disagrees with it ends failed, "refused: …", with nothing else changed; one started after
    `expires_at` ends expired; one whose tenant's split changed since it was queued ends stale
    (unless forced). Otherwise it runs: the operation's status and the traffic change commit
    together. A domain error (say, nothing to roll back) marks it failed with the message; the
    change itself is undone through a savepoint. Retryable errors are raised.
    """
    operation = lock_operation(session, operation_id)
    if operation.status in FINAL_OPERATION_STATUSES:
        return operation
    if asked is not None and operation.enqueued_at is None:
        # A message brought it, so the broker had it: the sender marks that only after its send
        # returns, which can be after this operation has ended.
        operation.enqueued_at = clock.now()
    if asked is not None:
        disagreement = _disagreement(session, operation, asked)
        if disagreement is not None:
            return finish(session, operation, OperationStatus.FAILED, f"refused: {disagreement}")
    now = clock.now()
    if now > expiry(operation):
        return finish(session, operation, OperationStatus.EXPIRED, expired_reason(operation, now))
    lock_tenant(session, operation.tenant_id)
    if not operation.force:
        change = split_change(session, operation)
        if change is not None:
            return finish(session, operation, OperationStatus.STALE, change)
    operation.status = OperationStatus.RUNNING
    operation.started_at = now
    actor = f"operator:{operation.actor}"
    try:
        with session.begin_nested():
            if operation.kind == OperationKind.PROMOTE:
                done = promote(
                    session,
                    operation.tenant_id,
                    operation.version or 0,
                    operation.traffic_percent or 100,
                    actor=actor,
                    reason=operation.reason,
                )
            else:
                done = rollback(session, operation.tenant_id, actor=actor, reason=operation.reason)
    except FtdeployError as error:
        if error.retryable:
            raise
        return finish(session, operation, OperationStatus.FAILED, str(error))
    operation.result = _describe(done)
    return finish(session, operation, OperationStatus.SUCCEEDED, None)


def _disagreement(session: Session, operation: Operation, asked: Asked) -> str | None:
    """What the message says that the stored operation does not, or None."""
    if asked.kind != operation.kind:
        return f"the message is a {asked.kind}, the operation a {operation.kind}"
    try:
        named = find_tenant(session, validation.tenant_ref(asked.tenant))
    except (InvalidInput, TenantNotFound):
        named = None
    if named is None or named.id != operation.tenant_id:
        return f"the message names tenant {str(asked.tenant)[:100]!r}, not the operation's"
    if operation.kind == OperationKind.PROMOTE:
        try:
            version = validation.version_number(asked.version)
            percent = validation.traffic_percent(asked.traffic_percent)
        except InvalidInput as error:
            return f"the message's {error.field} is invalid"
        if (version, percent) != (operation.version, operation.traffic_percent):
            return (
                f"the message asks v{version} at {percent}%, the operation "
                f"v{operation.version} at {operation.traffic_percent}%"
            )
    return None


def split_change(session: Session, operation: Operation) -> str | None:
    """Why the operation is stale, or None: the tenant's split now differs from the one it was
    queued on, or a traffic change since then moved it (and another moved it back). Call with
    the tenant locked. Rows from before the split was recorded are never stale."""
    if operation.queued_split is None:
        return None
    queued = dict(operation.queued_split)
    now = traffic.as_json(current_split(session, operation.tenant_id))
    moved = session.scalars(
        select(TrafficEvent)
        .where(
            TrafficEvent.tenant_id == operation.tenant_id,
            TrafficEvent.id > (operation.queued_after_event or 0),
        )
        .order_by(TrafficEvent.id)
        .limit(100)
    ).all()
    first_move = next((e for e in moved if dict(e.split_before) != dict(e.split_after)), None)
    if now == queued and first_move is None:
        return None
    if now != queued:
        what = f"the split changed since it was queued: {split_text(queued)} -> {split_text(now)}"
    else:
        what = f"the split changed and changed back since it was queued ({split_text(now)})"
    if first_move is not None:
        what += f" (first by {first_move.action} by {first_move.actor}: {first_move.reason})"
    return f"stale: {what}; queue it again to decide on the split now, or force it"


def split_text(split: dict[str, int]) -> str:
    """`v1:80% v2:20%`, or `nothing serving`."""
    ordered = sorted(split.items(), key=lambda item: int(item[0]))
    return " ".join(f"v{v}:{p}%" for v, p in ordered) or "nothing serving"


def _describe(change: Any) -> dict[str, Any]:
    return {
        "action": change.action,
        "version": change.version,
        "before": {str(k): v for k, v in sorted(change.before.items())},
        "after": {str(k): v for k, v in sorted(change.after.items())},
        "reason": change.reason,
    }
