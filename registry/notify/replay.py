"""Replay: send an endpoint again what it did not get — deliveries that ended failed (refused,
or out of retries), and the events it wanted that were written while it was disabled (an
endpoint that is disabled gets no delivery made for it; `outbox.emit`).

A replayed delivery is the same delivery (a failed one made pending again, its retry schedule
started over, its attempts kept) or a new one of the same event, so it goes with the event's own
`webhook-id` (receivers deduplicate on it) and its own stream and sequence number: the delivery
loop sends it in order with the endpoint's other pending deliveries of that tenant, ahead of any
later one. It is sent after the commit, as every new delivery is (`outbox.deliver_after_commit`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from registry import clock, dialect, validation
from registry.notify import outbox
from registry.notify.errors import EndpointDisabled, NotificationNotFound, NotReplayable
from registry.notify.models import NotificationDelivery, NotificationEndpoint, OutboxEvent
from registry.notify.owners import Owner, Visible, find_endpoint
from registry.notify.types import DeliveryStatus, EventType

# Rows per INSERT: well inside SQLite's limit of bound parameters.
INSERT_CHUNK = 500


@dataclass(frozen=True)
class Replayed:
    endpoint: str
    requeued: list[str]  # webhook-ids of failed deliveries made pending again
    missed: list[str]  # webhook-ids of events it never got (disabled), now queued

    def record(self) -> dict[str, Any]:
        return {
            "name": self.endpoint,
            "requeued": len(self.requeued),
            "missed": len(self.missed),
            "webhook_ids": sorted(self.requeued + self.missed),
        }


def replay(
    session: Session,
    name: str,
    *,
    since: str | None = None,
    event: str | None = None,
    owner: Owner = None,
    visible: Visible = None,
) -> Replayed:
    """Queue again, for the endpoint, its failed deliveries and the events it missed while
    disabled: of events written since `since` (a duration back from now, `2h`, or an ISO 8601
    time; default: since the endpoint was added), or only the notification `event` (its
    webhook-id).

    Locks the endpoint's row (two replays do not race). Idempotent: what is queued is pending, so
    a second replay finds nothing more. Raises InvalidInput (since, event), what `find_endpoint`
    raises (EndpointNotFound, EndpointAmbiguous, TenantNotFound), EndpointDisabled (enable it
    first: what it queued would only wait), and with `event`: NotificationNotFound (not an event
    meant for this endpoint), NotReplayable (its delivery is pending or delivered).
    """
    now = clock.now()
    start = validation.since(since, now) if since is not None else None
    event_id = validation.uuid_id(event, "event") if event is not None else None
    endpoint = find_endpoint(session, name, owner=owner, visible=visible, lock=True)
    if not endpoint.enabled:
        raise EndpointDisabled(endpoint.name, endpoint.disabled_reason)
    if event_id is not None:
        _check_replayable(session, endpoint, event_id)
    events = select(OutboxEvent.id).where(OutboxEvent.created_at >= endpoint.created_at)
    if start is not None:
        events = events.where(OutboxEvent.created_at >= start)
    if event_id is not None:
        events = events.where(OutboxEvent.id == event_id)

    requeued = list(
        session.scalars(
            select(NotificationDelivery.event_id).where(
                NotificationDelivery.endpoint_id == endpoint.id,
                NotificationDelivery.status == DeliveryStatus.FAILED,
                NotificationDelivery.event_id.in_(events),
            )
        )
    )
    if requeued:
        session.execute(
            update(NotificationDelivery)
            .where(
                NotificationDelivery.endpoint_id == endpoint.id,
                NotificationDelivery.event_id.in_(requeued),
            )
            .values(
                status=DeliveryStatus.PENDING,
                attempts=0,
                next_attempt_at=now,
                finished_at=None,
            )
        )
    missed = _missed(session, endpoint, events)
    for chunk in range(0, len(missed), INSERT_CHUNK):
        session.execute(
            dialect.insert(session, NotificationDelivery)
            .values(
                [
                    {
                        "event_id": row.id,
                        "endpoint_id": endpoint.id,
                        "stream": row.stream,
                        "seq": row.seq,
                        "status": DeliveryStatus.PENDING,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                    for row in missed[chunk : chunk + INSERT_CHUNK]
                ]
            )
            .on_conflict_do_nothing(index_elements=["event_id", "endpoint_id"])
        )
    session.flush()
    outbox.deliver_after_commit(session, [endpoint.id] if requeued or missed else [])
    return Replayed(endpoint.name, [str(i) for i in requeued], [str(r.id) for r in missed])


def _missed(session: Session, endpoint: NotificationEndpoint, events: Any) -> list[Any]:
    """Of `events` (a query of outbox ids), those the endpoint would have got a delivery of,
    had it been enabled, and has none, in sequence order."""
    query = (
        select(
            OutboxEvent.id, OutboxEvent.stream, OutboxEvent.seq, OutboxEvent.type, OutboxEvent.data
        )
        .where(
            OutboxEvent.id.in_(events),
            ~exists().where(
                NotificationDelivery.event_id == OutboxEvent.id,
                NotificationDelivery.endpoint_id == endpoint.id,
            ),
        )
        .order_by(OutboxEvent.stream, OutboxEvent.seq)
    )
    if endpoint.tenant_id is not None:  # a global endpoint gets every tenant's events
        query = query.where(OutboxEvent.tenant_id == endpoint.tenant_id)
    if endpoint.event_types:
        query = query.where(OutboxEvent.type.in_(endpoint.event_types))
    return [
        row
        for row in session.execute(query).all()
        # Its own `endpoint.disabled` notice was never meant for it.
        if not (row.type == EventType.ENDPOINT_DISABLED and _is_about(row.data, endpoint))
    ]


def _is_about(notice: dict[str, Any], endpoint: NotificationEndpoint) -> bool:
    """Whether an `endpoint.disabled` notice is about this endpoint: its name and its owner
    (another tenant's endpoint, or a global one, may have the same name)."""
    tenant = notice.get("tenant") or {}
    owner = tenant.get("id") if isinstance(tenant, dict) else None
    expected = str(endpoint.tenant_id) if endpoint.tenant_id else None
    return bool(notice.get("endpoint") == endpoint.name and owner == expected)


def _check_replayable(
    session: Session, endpoint: NotificationEndpoint, event_id: uuid.UUID
) -> None:
    status = session.scalar(
        select(NotificationDelivery.status).where(
            NotificationDelivery.endpoint_id == endpoint.id,
            NotificationDelivery.event_id == event_id,
        )
    )
    if status is None:
        one = select(OutboxEvent.id).where(
            OutboxEvent.id == event_id, OutboxEvent.created_at >= endpoint.created_at
        )
        if not _missed(session, endpoint, one):
            raise NotificationNotFound(endpoint.name, str(event_id))
    elif status != DeliveryStatus.FAILED:
        raise NotReplayable(endpoint.name, str(event_id), status)
