"""The outbox: a notifiable change writes its event here, in its own transaction.

`emit` numbers the event in its stream (the tenant, or "global" for an event without one) with
no gaps, and makes one pending delivery per enabled endpoint that wants it, all in the caller's
transaction: if the change rolls back, no notification exists; if it commits, every delivery
exists and will be attempted (at least once). The endpoints that got deliveries are noted in
`session.info`; after the commit (`registry.db.after_commit`) one delivery task per endpoint is
sent (`send_pending`, through `registry.messages`); if that send never happens (a crash right
after the commit), beat's reconciler finds the pending deliveries.

Numbers are taken under the stream row's lock (an upsert that counts one more, which locks the
row; SQLite serializes writers),
held until the commit: two transactions of one tenant commit their events in number order, so a
reader never sees n+1 committed while n is still to come.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache, partial
from typing import Any, cast

from sqlalchemy import (
    Select,
    String,
    Table,
    Uuid,
    and_,
    bindparam,
    event,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, make_transient_to_detached

from registry import clock, dialect, messages
from registry.db import after_commit
from registry.models import UTCDateTime
from registry.notify.models import (
    NotificationDelivery,
    NotificationEndpoint,
    NotificationStream,
    OutboxEvent,
)
from registry.notify.types import DeliveryStatus, EventType
from registry.rows import attach_rows, execute, insert_row, load_rows

log = logging.getLogger("ftdeploy.notify")

PENDING_KEY = "ftdeploy.notify.pending_endpoints"
GLOBAL_STREAM = "global"


def stream_of(tenant_id: uuid.UUID | None) -> str:
    return GLOBAL_STREAM if tenant_id is None else str(tenant_id)


def emit(
    session: Session,
    tenant_id: uuid.UUID | None,
    type_: EventType | str,
    data: dict[str, Any],
    *,
    dedupe_key: str | None = None,
) -> OutboxEvent | None:
    """Write one notification of `type_` with `data` (plain JSON values) for the tenant.

    In the caller's transaction; takes the stream's lock until it ends. With `dedupe_key`, a
    second emit of the same key (a redelivered message doing the same work again) writes
    nothing and returns None. Raises ValueError for a type that is not an `EventType`.
    """
    kind = EventType(type_)
    stream = stream_of(tenant_id)
    now = clock.now()
    if session.get_bind().dialect.name == "postgresql":
        return _emit_at_once(session, tenant_id, kind, stream, data, dedupe_key, now)
    seq = _take_number(session, stream)
    row = _event_row(uuid.uuid4(), tenant_id, stream, seq, kind, data, dedupe_key, now)
    # One statement: the insert is skipped when the key is already there.
    unless = "dedupe_key" if dedupe_key is not None else None
    if not insert_row(session, row, unless_exists=unless):
        # Nobody else can have seen the number (the stream stays locked until the end): give it
        # back, so the stream has no gap.
        session.execute(_GIVE_BACK, {"b_stream": stream, "b_seq": seq - 1})
        return None
    _add_deliveries(session, row, [e for e in _endpoints_for(session, tenant_id) if wants(e, kind)])
    return row


def _event_row(
    event_id: uuid.UUID,
    tenant_id: uuid.UUID | None,
    stream: str,
    seq: int,
    kind: EventType,
    data: dict[str, Any],
    dedupe_key: str | None,
    now: datetime,
) -> OutboxEvent:
    return OutboxEvent(
        id=event_id,
        tenant_id=tenant_id,
        stream=stream,
        seq=seq,
        type=kind.value,
        # Receivers order by it and see a gap as a missed event: it is in every payload (on
        # PostgreSQL the row's own data gets it from the statement that writes it).
        data={**data, "sequence": seq},
        dedupe_key=dedupe_key,
        created_at=now,
    )


def _add_deliveries(
    session: Session, row: OutboxEvent, endpoints: list[NotificationEndpoint]
) -> None:
    stream, seq, now = row.stream, row.seq, row.created_at
    for endpoint in endpoints:
        session.add(
            NotificationDelivery(
                event_id=row.id,
                endpoint_id=endpoint.id,
                stream=stream,
                seq=seq,
                status=DeliveryStatus.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
    session.flush()
    deliver_after_commit(session, [e.id for e in endpoints])


def _emit_at_once(
    session: Session,
    tenant_id: uuid.UUID | None,
    kind: EventType,
    stream: str,
    data: dict[str, Any],
    dedupe_key: str | None,
    now: datetime,
) -> OutboxEvent | None:
    # `emit` on PostgreSQL in one statement: the number taken, the event written with it (unless
    # its key is there) and the endpoints read.
    event_id = uuid.uuid4()
    params = {
        "id": event_id,
        "tenant_id": tenant_id,
        "stream": stream,
        "type": kind.value,
        "data": json.dumps(data),
        "dedupe_key": dedupe_key,
        "now": now,
    }
    found = execute(session, _EMIT, params).all()
    seq = int(found[0].last_seq)
    if not found[0].written:
        session.execute(_GIVE_BACK, {"b_stream": stream, "b_seq": seq - 1})  # as in `emit`
        return None
    row = _event_row(event_id, tenant_id, stream, seq, kind, data, dedupe_key, now)
    make_transient_to_detached(row)
    session.add(row)
    rows = [r._mapping for r in found if r.id is not None]
    endpoints = attach_rows(session, NotificationEndpoint, rows)
    _add_deliveries(session, row, [e for e in endpoints if wants(e, kind)])
    return row


def deliver_after_commit(session: Session, endpoint_ids: Iterable[uuid.UUID]) -> None:
    """Note that these endpoints got deliveries in this transaction: once it commits, one
    delivery task per endpoint is sent (`send_pending`); nothing if it rolls back."""
    ids = set(endpoint_ids)
    if not ids:
        return
    session.info.setdefault(PENDING_KEY, set()).update(ids)
    # The first of these callbacks to run takes every endpoint noted: one task per endpoint per
    # commit, however many events it wrote.
    after_commit(session, partial(send_pending, session))


def wants(endpoint: NotificationEndpoint, kind: EventType) -> bool:
    return not endpoint.event_types or kind.value in endpoint.event_types


def _endpoints_for(session: Session, tenant_id: uuid.UUID | None) -> list[NotificationEndpoint]:
    if tenant_id is None:
        return load_rows(session, NotificationEndpoint, _GLOBAL_ENDPOINTS, {})
    return load_rows(session, NotificationEndpoint, _ENDPOINTS, {"tenant_id": tenant_id})


def _take_number(session: Session, stream: str) -> int:
    """The stream's next number, taken under the stream row's lock (created at 0 on first use):
    one upsert that locks the row, counts one more and returns it."""
    statement = _take_statement(session.get_bind().dialect.name)
    return int(session.execute(statement, {"stream": stream}).scalar_one())


# Built once (building a statement costs more than running it; a prebuilt one's cache key is
# memoized).
_endpoints = NotificationEndpoint.__table__
_ENABLED = _endpoints.c.enabled.is_(True)
_GLOBAL_ENDPOINTS = select(_endpoints).where(_ENABLED, _endpoints.c.tenant_id.is_(None))
_ENDPOINTS = select(_endpoints).where(
    _ENABLED,
    or_(_endpoints.c.tenant_id.is_(None), _endpoints.c.tenant_id == bindparam("tenant_id")),
)
_streams = NotificationStream.__table__.c
_GIVE_BACK = (
    update(cast(Table, NotificationStream.__table__))
    .where(_streams.stream == bindparam("b_stream"))
    .values(last_seq=bindparam("b_seq"))
)


@lru_cache(maxsize=4)
def _take_statement(dialect_name: str) -> Any:
    insert = dialect.insert_for(dialect_name, NotificationStream.__table__)
    return (
        insert.values(stream=bindparam("stream"), last_seq=1)
        .on_conflict_do_update(index_elements=["stream"], set_={"last_seq": _streams.last_seq + 1})
        .returning(_streams.last_seq)
    )


# `emit`'s statements as one, on PostgreSQL (data-modifying CTEs): the number taken by
# `_take_statement`'s upsert, the event written with it (unless its key is there), and the
# endpoints that get it, read only when it was written. Its columns: the endpoint's, then the
# number taken and whether the event was written.
def _emit_statement() -> Select[Any]:
    taken = _take_statement("postgresql").cte("taken")
    events = cast(Table, OutboxEvent.__table__)
    tenant_id = bindparam("tenant_id", type_=Uuid())
    data = sa_cast(bindparam("data", type_=String()), JSONB).op("||")(
        func.jsonb_build_object("sequence", taken.c.last_seq)
    )
    event_row = select(
        bindparam("id", type_=Uuid()),
        tenant_id,
        bindparam("stream", type_=events.c.stream.type),
        taken.c.last_seq,
        bindparam("type", type_=events.c.type.type),
        data,
        bindparam("dedupe_key", type_=events.c.dedupe_key.type),
        bindparam("now", type_=UTCDateTime()),
    )
    columns = ["id", "tenant_id", "stream", "seq", "type", "data", "dedupe_key", "created_at"]
    written = (
        postgresql.insert(events)
        .from_select(columns, event_row)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(events.c.id)
        .cte("written")
    )
    was_written = exists().select_from(written)
    wanted = and_(
        was_written,
        _ENABLED,
        or_(_endpoints.c.tenant_id.is_(None), _endpoints.c.tenant_id == tenant_id),
    )
    return select(*_endpoints.c, taken.c.last_seq, was_written.label("written")).select_from(
        taken.outerjoin(_endpoints, wanted)
    )


_EMIT = _emit_statement()


def take_pending(session: Session) -> set[uuid.UUID]:
    """The endpoints that got deliveries in the transaction just committed (and forget them)."""
    pending: set[uuid.UUID] = session.info.pop(PENDING_KEY, set())
    return pending


def send_pending(session: Session) -> None:
    """After the commit: ask the worker to deliver to each endpoint that got deliveries. A send
    that fails is logged, not raised: the commit stands, and beat's reconciler delivers what was
    never sent."""
    for endpoint_id in sorted(take_pending(session), key=str):
        try:
            messages.deliver(
                messages.Message(
                    messages.DELIVER_NOTIFICATIONS, kwargs={"endpoint_id": str(endpoint_id)}
                )
            )
        except Exception as error:
            log.warning(
                "notify.send_failed",
                extra={
                    "ftdeploy_fields": {"endpoint": str(endpoint_id), "error": type(error).__name__}
                },
            )


@event.listens_for(Session, "after_transaction_end")
def _forget_pending(session: Session, transaction: Any) -> None:
    # Runs after `after_commit` (where `send_pending` took them): nothing carries over to the
    # session's next transaction, and a rolled-back one leaves nothing to send.
    if transaction.parent is None:
        session.info.pop(PENDING_KEY, None)
