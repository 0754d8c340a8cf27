"""Operators' promote and rollback, queued for the worker.

queued → succeeded | failed | stale | expired | cancelled (`running` while a worker holds it).

An operation is decided against the split it was queued on. Queueing records the tenant's split
then (`queued_split`, {"<version>": percent} of its production versions) and the id of its newest
traffic event (`queued_after_event`). When the worker runs it, under the tenant's lock, it ends
`stale` if the split is not the same, or if any traffic change since then moved the split (even
if a later one moved it back: someone decided in between, say a promotion that was rolled back).
Changes that leave the split as it was (a version staged at 0%, archiving, a promotion to the
split in force) do not make it stale. Queued with `force`, it runs on whatever split it finds.

It ends `expired` when no worker started it before `expires_at` (queueing time plus
FTDEPLOY_OPERATION_TTL_SECONDS); beat's reconciler also expires those still queued by then, and
re-sends those whose message never reached the broker (`registry.stranded_operations`). An
operator may cancel it while it is queued. Every final status is told once
(`notices.operation_finished`) and shown by `activity`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from registry import clock, messages, traffic, validation
from registry.db import lock_tenant
from registry.errors import (
    FtdeployError,
    InvalidInput,
    OperationNotCancellable,
    OperationNotFound,
    TenantNotFound,
)
from registry.models import (
    FINAL_OPERATION_STATUSES,
    Operation,
    OperationKind,
    OperationStatus,
    Tenant,
    TrafficEvent,
)
from registry.notify import notices
from registry.settings import get_settings
from registry.tenants import find_tenant
from registry.versions import current_split, find_version, promote, rollback

MAX_REASON = 500
MAX_ERROR = 2000


def queue_operation(
    session: Session,
    tenant_ref: str | uuid.UUID,
    kind: str,
    *,
    version: object = None,
    traffic_percent: object = None,
    actor: str = "operator",
    reason: str | None = None,
    force: bool = False,
    ttl: timedelta | None = None,
) -> Operation:
    """Record an operation to run, with the split it is decided against (module docstring) and
    its expiry (`ttl`, default FTDEPLOY_OPERATION_TTL_SECONDS). Input is checked now (tenant,
    version of this tenant, percent, reason), so a bad request is refused at once with nothing
    queued. The reason, when given, is the audit trail's reason when the operation runs. Takes
    no lock: the split recorded is the one committed when it is read."""
    tenant = find_tenant(session, tenant_ref)
    if kind == OperationKind.PROMOTE:
        number = validation.version_number(version)
        percent = validation.traffic_percent(100 if traffic_percent is None else traffic_percent)
        find_version(session, tenant, number)
    elif kind == OperationKind.ROLLBACK:
        number, percent = None, None
    else:
        raise InvalidInput("operation", f"{kind!r} is not promote or rollback")
    now = clock.now()
    operation = Operation(
        tenant_id=tenant.id,
        kind=kind,
        version=number,
        traffic_percent=percent,
        actor=actor,
        reason=check_reason(reason),
        force=bool(force),
        queued_split=traffic.as_json(current_split(session, tenant.id)),
        queued_after_event=_newest_traffic_event(session, tenant.id),
        created_at=now,
        expires_at=now + (ttl if ttl is not None else default_ttl()),
    )
    session.add(operation)
    session.flush()
    return operation


def default_ttl() -> timedelta:
    return timedelta(seconds=get_settings().operation_ttl_seconds)


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
    force: bool = False,
) -> Operation:
    """Queue an operation (`queue_operation`) and ask the worker to run it after the commit;
    once the broker has the message, the operation is marked enqueued (`enqueued_at`). A
    message that is never sent leaves it queued and unenqueued: the reconciler sends it."""
    operation = queue_operation(
        session,
        tenant_ref,
        kind,
        version=version,
        traffic_percent=traffic_percent,
        actor=actor,
        reason=reason,
        force=force,
    )
    send(session, operation, str(tenant_ref))
    return operation


def send(session: Session, operation: Operation, tenant: str | None = None) -> None:
    """Ask the worker, after the commit, to run the operation (`tenant`: how the door named the
    tenant, default its id); `enqueued_at` is set once the broker has it."""
    arguments: dict[str, Any] = {
        "tenant": tenant or str(operation.tenant_id),
        "operation_id": str(operation.id),
    }
    if operation.kind == OperationKind.PROMOTE:
        task = messages.PROMOTE
        arguments.update(version=operation.version, traffic_percent=operation.traffic_percent)
    else:
        task = messages.ROLLBACK
    messages.send_after_commit(
        session, task, kwargs=arguments, on_sent=partial(mark_enqueued, operation_id=operation.id)
    )


def mark_enqueued(session: Session, operation_id: uuid.UUID) -> None:
    session.execute(
        update(Operation)
        .where(Operation.id == operation_id, Operation.enqueued_at.is_(None))
        .values(enqueued_at=clock.now())
    )


def get_operation(session: Session, operation_id: str | uuid.UUID) -> Operation:
    # A number or a list from a message, say, is refused as not an id.
    key = validation.uuid_id(operation_id, "operation id")
    operation = session.get(Operation, key, populate_existing=True)
    if operation is None:
        raise OperationNotFound(str(operation_id))
    return operation


def list_operations(
    session: Session,
    tenant_ref: str | uuid.UUID | None = None,
    *,
    status: str | None = None,
    limit: int = 50,
    tenant_ids: list[uuid.UUID] | None = None,
) -> list[tuple[Operation, str]]:
    """Operations with their tenant's slug, newest first: of one tenant (`tenant_ref`), of the
    tenants `tenant_ids` (a scoped key's), or of all. Reads only. Raises TenantNotFound,
    InvalidInput (status, limit)."""
    query = select(Operation, Tenant.slug).join(Tenant, Tenant.id == Operation.tenant_id)
    if tenant_ref is not None:
        query = query.where(Operation.tenant_id == find_tenant(session, tenant_ref).id)
    if tenant_ids is not None:
        query = query.where(Operation.tenant_id.in_(tenant_ids))
    if status is not None:
        wanted = validation.one_of("status", status, OperationStatus)
        query = query.where(Operation.status == wanted)
    limit = validation.whole_number("limit", limit, 1, 1000)
    query = query.order_by(Operation.created_at.desc(), Operation.id).limit(limit)
    return [(operation, slug) for operation, slug in session.execute(query)]


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
    operation = _locked(session, operation_id)
    if operation.status in FINAL_OPERATION_STATUSES:
        return operation
    if asked is not None:
        disagreement = _disagreement(session, operation, asked)
        if disagreement is not None:
            return _end(session, operation, OperationStatus.FAILED, f"refused: {disagreement}")
    now = clock.now()
    if now > expiry(operation):
        return _end(session, operation, OperationStatus.EXPIRED, _expired_reason(operation, now))
    lock_tenant(session, operation.tenant_id)
    if not operation.force:
        change = split_change(session, operation)
        if change is not None:
            return _end(session, operation, OperationStatus.STALE, change)
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
        return _end(session, operation, OperationStatus.FAILED, str(error))
    operation.result = _describe(done)
    return _end(session, operation, OperationStatus.SUCCEEDED, None)


def _locked(session: Session, operation_id: str | uuid.UUID) -> Operation:
    operation = get_operation(session, operation_id)
    return session.scalars(
        select(Operation)
        .where(Operation.id == operation.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def _end(
    session: Session, operation: Operation, status: OperationStatus, error: str | None
) -> Operation:
    """Give the operation its final status and reason, and tell of it (once per status)."""
    operation.status = status
    operation.error = error[:MAX_ERROR] if error is not None else None
    operation.finished_at = clock.now()
    session.flush()
    notices.operation_finished(session, operation)
    return operation


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


def expiry(operation: Operation) -> datetime:
    """When the operation expires (rows from before its time to live: their queueing time
    plus today's FTDEPLOY_OPERATION_TTL_SECONDS)."""
    return operation.expires_at or operation.created_at + default_ttl()


def _expired_reason(operation: Operation, now: datetime) -> str:
    lived = (expiry(operation) - operation.created_at).total_seconds()
    waited = (now - operation.created_at).total_seconds()
    return (
        f"expired: not started within its time to live ({lived:g} s; queued {waited:.0f} s "
        "ago), so it was not applied to a split that may have moved on; queue it again"
    )


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


def _newest_traffic_event(session: Session, tenant_id: uuid.UUID) -> int | None:
    return session.scalar(
        select(TrafficEvent.id)
        .where(TrafficEvent.tenant_id == tenant_id)
        .order_by(TrafficEvent.id.desc())
        .limit(1)
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
    why = check_reason(reason)
    locked.result = {"cancelled_by": actor, "reason": why}
    text = f"cancelled by {actor}" + (f": {why}" if why else "")
    return _end(session, locked, OperationStatus.CANCELLED, text)


def fail_operation(session: Session, operation_id: str | uuid.UUID, reason: str) -> bool:
    """End an operation that cannot be run (its task gave up) as failed with `reason`. Returns
    False when there is no such operation or it had already ended. Raises InvalidInput for a
    malformed id."""
    try:
        operation = _locked(session, operation_id)
    except OperationNotFound:
        return False
    if operation.status in FINAL_OPERATION_STATUSES:
        return False
    _end(session, operation, OperationStatus.FAILED, reason)
    return True


def expire_operation(session: Session, operation: Operation, now: datetime) -> None:
    """End a queued operation (its row locked by the caller) as expired, with the reason."""
    _end(session, operation, OperationStatus.EXPIRED, _expired_reason(operation, now))


def _describe(change: Any) -> dict[str, Any]:
    return {
        "action": change.action,
        "version": change.version,
        "before": {str(k): v for k, v in sorted(change.before.items())},
        "after": {str(k): v for k, v in sorted(change.after.items())},
        "reason": change.reason,
    }
