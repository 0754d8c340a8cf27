"""Delivering the outbox: one endpoint at a time, each tenant's events in order, at least once.

The delivery loop (the worker's `ftdeploy.deliver_notifications`) runs, per endpoint:
`claim` (a lease on the endpoint: one loop per endpoint at a time, across workers), then
`next_due` / send / `record_attempt` until nothing is due, then `release`. Each step is its own
short transaction; no transaction is open while a request is in flight.

Order: a delivery is due only when no earlier delivery of the same endpoint and stream (tenant)
is still pending, so a later event is never sent while an earlier one waits for its retry. A
delivery given up (refused for good, or out of retries) no longer holds the others back.

At least once: a delivery is marked delivered only after a 2xx, in the transaction after the
request. A loop that dies in between (SIGKILL) leaves it pending with the lease running out;
the next loop sends it again, with the same `webhook-id`, which receivers deduplicate on.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session, aliased

from registry.models import Tenant
from registry.notify import endpoints, secrets
from registry.notify.errors import SecretUnreadable
from registry.notify.models import (
    DeliveryAttempt,
    NotificationDelivery,
    NotificationEndpoint,
    OutboxEvent,
)
from registry.notify.render import Message
from registry.notify.sender import Sent
from registry.notify.types import TEST_EVENT, DeliveryStatus


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # failed; attempted again on the schedule
    FAILED = "failed"  # refused for good, or the schedule ran out: given up
    GONE = "gone"  # 410: the endpoint is disabled


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[float, ...]  # seconds before retry 1, 2, …
    disable_after_seconds: float
    jitter: float = 0.2  # each delay is multiplied by a random factor in 1 ± jitter


@dataclass(frozen=True)
class Outgoing:
    delivery_id: int
    endpoint_id: uuid.UUID
    endpoint: str  # name (logs, metrics)
    format: str
    url: str
    secret: str | None
    message: Message
    attempts: int  # before this one


@dataclass(frozen=True)
class Recorded:
    outcome: Outcome
    next_attempt_at: datetime | None
    disabled: str | None  # why the endpoint was disabled by this attempt, if it was


def claim(session: Session, endpoint_id: uuid.UUID, now: datetime, lease_seconds: float) -> bool:
    """Take the endpoint's lease if it is enabled and nobody holds it (or theirs ran out)."""
    result = session.execute(
        update(NotificationEndpoint)
        .where(
            NotificationEndpoint.id == endpoint_id,
            NotificationEndpoint.enabled.is_(True),
            NotificationEndpoint.leased_until.is_(None) | (NotificationEndpoint.leased_until < now),
        )
        .values(leased_until=now + timedelta(seconds=lease_seconds))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release(session: Session, endpoint_id: uuid.UUID) -> None:
    session.execute(
        update(NotificationEndpoint)
        .where(NotificationEndpoint.id == endpoint_id)
        .values(leased_until=None)
    )


def _due(now: datetime) -> Any:
    earlier = aliased(NotificationDelivery)
    return and_(
        NotificationDelivery.status == DeliveryStatus.PENDING,
        NotificationDelivery.next_attempt_at <= now,
        ~exists().where(
            earlier.endpoint_id == NotificationDelivery.endpoint_id,
            earlier.stream == NotificationDelivery.stream,
            earlier.status == DeliveryStatus.PENDING,
            earlier.seq < NotificationDelivery.seq,
        ),
    )


def next_due(
    session: Session, endpoint_id: uuid.UUID, now: datetime, lease_seconds: float
) -> Outgoing | None:
    """The next delivery to attempt for the endpoint (held by the caller's lease, which this
    extends), with its URL and secret decrypted, or None when nothing is due. Raises
    SecretUnreadable when the stored URL or secret do not decrypt."""
    endpoint = session.get(NotificationEndpoint, endpoint_id, populate_existing=True)
    if endpoint is None or not endpoint.enabled:
        return None
    row = session.execute(
        select(NotificationDelivery, OutboxEvent)
        .join(OutboxEvent, OutboxEvent.id == NotificationDelivery.event_id)
        .where(NotificationDelivery.endpoint_id == endpoint_id, _due(now))
        .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.seq)
        .limit(1)
    ).first()
    if row is None:
        return None
    delivery, event = row
    endpoint.leased_until = now + timedelta(seconds=lease_seconds)
    url, secret = _open(endpoint)
    session.flush()
    return Outgoing(
        delivery.id,
        endpoint.id,
        endpoint.name,
        endpoint.format,
        url,
        secret,
        Message(str(event.id), event.type, event.created_at, dict(event.data)),
        delivery.attempts,
    )


def test_outgoing(session: Session, endpoint: NotificationEndpoint, now: datetime) -> Outgoing:
    """A `notification.test` message for the endpoint (enabled or not), outside the outbox: it
    is numbered in no stream and recorded nowhere. Raises SecretUnreadable."""
    url, secret = _open(endpoint)
    tenant = session.get(Tenant, endpoint.tenant_id) if endpoint.tenant_id else None
    data = {
        "tenant": {"id": str(tenant.id), "slug": tenant.slug} if tenant else None,
        "endpoint": endpoint.name,
        "reason": "a test notification, sent on request (ftdeploy notify test)",
    }
    message = Message(f"test_{uuid.uuid4().hex}", TEST_EVENT, now, data)
    return Outgoing(0, endpoint.id, endpoint.name, endpoint.format, url, secret, message, 0)


def _open(endpoint: NotificationEndpoint) -> tuple[str, str | None]:
    url = secrets.decrypt(endpoint.url_encrypted, endpoint.id, "url")
    secret = (
        secrets.decrypt(endpoint.secret_encrypted, endpoint.id, "secret")
        if endpoint.secret_encrypted is not None
        else None
    )
    if url is None or (endpoint.secret_encrypted is not None and secret is None):
        raise SecretUnreadable(endpoint.name)
    return url, secret


def classify(sent: Sent) -> Outcome:
    """2xx delivered; 410 gone; no answer, 429 and 5xx retried; any other answer (3xx: we do
    not follow redirects; 4xx: the receiver refuses this request) given up."""
    code = sent.status_code
    if code is None or code == 429 or code >= 500:
        return Outcome.RETRY
    if 200 <= code < 300:
        return Outcome.DELIVERED
    if code == 410:
        return Outcome.GONE
    return Outcome.FAILED


def retry_delay(attempts: int, sent: Sent, policy: RetryPolicy) -> float | None:
    """Seconds before the next attempt after `attempts` attempts, or None when the schedule has
    run out. A Retry-After is honoured as it is (it is the receiver's own number)."""
    if attempts > len(policy.schedule):
        return None
    if sent.retry_after is not None:
        return sent.retry_after
    base = policy.schedule[attempts - 1]
    return base * random.uniform(1 - policy.jitter, 1 + policy.jitter)


def record_attempt(
    session: Session, delivery_id: int, sent: Sent, now: datetime, policy: RetryPolicy
) -> Recorded:
    """Record one attempt and decide what follows: delivered, retry at a time, given up, or the
    endpoint disabled (410, or every attempt failing for `disable_after_seconds`). A disabled
    endpoint is told to the tenant's other endpoints (`endpoint.disabled`)."""
    delivery = session.get_one(NotificationDelivery, delivery_id, populate_existing=True)
    endpoint = session.get_one(NotificationEndpoint, delivery.endpoint_id, populate_existing=True)
    session.add(
        DeliveryAttempt(
            delivery_id=delivery.id,
            at=now,
            status_code=sent.status_code,
            error=sent.error,
            duration_ms=sent.duration_ms,
        )
    )
    delivery.attempts += 1
    delivery.last_status_code = sent.status_code
    delivery.last_error = sent.error
    outcome = classify(sent)
    next_at: datetime | None = None
    disabled: str | None = None
    if outcome is Outcome.DELIVERED:
        delivery.status = DeliveryStatus.DELIVERED
        delivery.finished_at = now
        endpoint.failing_since = None
    else:
        endpoint.failing_since = endpoint.failing_since or now
        if outcome is Outcome.RETRY:
            delay = retry_delay(delivery.attempts, sent, policy)
            if delay is None:
                outcome = Outcome.FAILED
            else:
                next_at = now + timedelta(seconds=delay)
                delivery.next_attempt_at = next_at
        if outcome is Outcome.FAILED:
            delivery.status = DeliveryStatus.FAILED
            delivery.finished_at = now
        failing_for = (now - endpoint.failing_since).total_seconds()
        if outcome is Outcome.GONE:
            disabled = "the receiver answered 410 Gone"
        elif failing_for >= policy.disable_after_seconds:
            since = endpoint.failing_since.isoformat()
            disabled = f"every attempt failed for {failing_for:.0f} s (since {since})"
    if disabled is not None:
        endpoints.disable(session, endpoint, disabled, now)
    session.flush()
    return Recorded(outcome, next_at, disabled)


def has_due(session: Session, endpoint_id: uuid.UUID, now: datetime) -> bool:
    return bool(
        session.scalar(
            select(func.count())
            .select_from(NotificationDelivery)
            .where(NotificationDelivery.endpoint_id == endpoint_id, _due(now))
        )
    )


def next_wakeup(session: Session, endpoint_id: uuid.UUID) -> datetime | None:
    """When the endpoint's next attempt is due (its earliest pending delivery), if any."""
    return session.scalar(
        select(func.min(NotificationDelivery.next_attempt_at)).where(
            NotificationDelivery.endpoint_id == endpoint_id,
            NotificationDelivery.status == DeliveryStatus.PENDING,
        )
    )


def due_endpoints(session: Session, now: datetime) -> list[uuid.UUID]:
    """Enabled endpoints with a delivery due and no live lease (for beat's reconciler: what was
    never sent, a retry whose time came, a loop that died)."""
    return list(
        session.scalars(
            select(NotificationEndpoint.id).where(
                NotificationEndpoint.enabled.is_(True),
                NotificationEndpoint.leased_until.is_(None)
                | (NotificationEndpoint.leased_until < now),
                exists().where(
                    NotificationDelivery.endpoint_id == NotificationEndpoint.id, _due(now)
                ),
            )
        )
    )


def backlog(session: Session, now: datetime) -> list[tuple[str, str | None, bool, int, float]]:
    """(endpoint, its tenant's slug or None for a global one, enabled, pending deliveries, age
    in seconds of the oldest) per endpoint: a name alone is unique only per owner."""
    rows = session.execute(
        select(
            NotificationEndpoint.name,
            Tenant.slug,
            NotificationEndpoint.enabled,
            func.count(NotificationDelivery.id),
            func.min(NotificationDelivery.created_at),
        )
        .select_from(NotificationEndpoint)
        .outerjoin(Tenant, Tenant.id == NotificationEndpoint.tenant_id)
        .outerjoin(
            NotificationDelivery,
            and_(
                NotificationDelivery.endpoint_id == NotificationEndpoint.id,
                NotificationDelivery.status == DeliveryStatus.PENDING,
            ),
        )
        .group_by(
            NotificationEndpoint.id,
            NotificationEndpoint.name,
            Tenant.slug,
            NotificationEndpoint.enabled,
        )
    ).all()
    return [
        (name, slug, bool(enabled), int(count), (now - oldest).total_seconds() if oldest else 0.0)
        for name, slug, enabled, count, oldest in rows
    ]
