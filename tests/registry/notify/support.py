"""Helpers for the notification tests: endpoints, the outbox as a list, delivery by hand."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from registry.notify import delivery, endpoints
from registry.notify.models import NotificationDelivery, OutboxEvent
from registry.notify.sender import Sent

POLICY = delivery.RetryPolicy(schedule=(5.0, 300.0, 1800.0), disable_after_seconds=3600.0, jitter=0)


def add(sessions: sessionmaker[Session], name: str, **options: Any) -> endpoints.NewEndpoint:
    with sessions() as session, session.begin():
        return endpoints.add_endpoint(
            session, name, f"https://hooks.example.com/{name}/t0k3n", **options
        )


def outbox(sessions: sessionmaker[Session]) -> list[OutboxEvent]:
    with sessions() as session:
        return list(
            session.scalars(select(OutboxEvent).order_by(OutboxEvent.stream, OutboxEvent.seq))
        )


def types(sessions: sessionmaker[Session]) -> list[str]:
    return [event.type for event in sorted(outbox(sessions), key=lambda e: e.created_at)]


def deliveries(sessions: sessionmaker[Session], endpoint_id: Any) -> list[NotificationDelivery]:
    with sessions() as session:
        return list(
            session.scalars(
                select(NotificationDelivery)
                .where(NotificationDelivery.endpoint_id == endpoint_id)
                .order_by(NotificationDelivery.id)
            )
        )


def answered(code: int | None, retry_after: float | None = None) -> Sent:
    return Sent(code, None if code and code < 300 else f"HTTP {code}", retry_after, 1.0)


def next_due(
    sessions: sessionmaker[Session], endpoint_id: Any, now: datetime
) -> delivery.Outgoing | None:
    with sessions() as session, session.begin():
        return delivery.next_due(session, endpoint_id, now, 30)


def record(
    sessions: sessionmaker[Session], outgoing: delivery.Outgoing, sent: Sent, now: datetime
) -> delivery.Recorded:
    with sessions() as session, session.begin():
        return delivery.record_attempt(session, outgoing.delivery_id, sent, now, POLICY)
