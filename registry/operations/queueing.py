"""Queueing an operator's operation: checked at once, recorded with the split it is decided
against and its expiry, sent to the worker after the commit; listed, looked up."""

from __future__ import annotations

import uuid
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from registry import clock, messages, traffic, validation
from registry.errors import InvalidInput, OperationNotFound
from registry.models import Operation, OperationKind, OperationStatus, Tenant, TrafficEvent
from registry.settings import get_settings
from registry.tenants import find_tenant
from registry.versions import current_split, find_version


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
        reason=validation.reason(reason),
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


def send(session: Session, operation: Operation, tenant: str | None = None) -> None:
    """Ask the worker, after the commit, to run the operation (`tenant`: how the door named the
    tenant, default its id); `enqueued_at` is set once the broker has it. A message that is
    never sent leaves the operation queued and unenqueued: the reconciler sends it."""
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


def _newest_traffic_event(session: Session, tenant_id: uuid.UUID) -> int | None:
    return session.scalar(
        select(TrafficEvent.id)
        .where(TrafficEvent.tenant_id == tenant_id)
        .order_by(TrafficEvent.id.desc())
        .limit(1)
    )
