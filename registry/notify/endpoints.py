"""Notification endpoints: add (the secret is returned once), list, enable, remove, and their
deliveries. Every input from outside is checked before anything is stored."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from registry import clock
from registry.errors import InvalidInput
from registry.models import Tenant
from registry.notify import secrets
from registry.notify.errors import EndpointExists, EndpointNotFound
from registry.notify.models import (
    DeliveryAttempt,
    NotificationDelivery,
    NotificationEndpoint,
    OutboxEvent,
)
from registry.notify.types import DeliveryStatus, EndpointFormat, parse_event_types
from registry.tenants import find_tenant

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_URL_LENGTH = 2000


@dataclass(frozen=True)
class NewEndpoint:
    endpoint: NotificationEndpoint
    secret: str | None  # the signing secret, shown this once (None for Slack)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidInput(
            "endpoint name", f"{name!r} is not 1-63 letters, digits, '-', '_' or '.'"
        )
    return name


def check_url(url: object) -> str:
    """An http(s) URL with a host. The message names the scheme or the problem, never the URL
    itself (it may carry a token)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidInput(
            "url", f"must be an http:// or https:// URL of at most {MAX_URL_LENGTH} characters"
        )
    if any(c.isspace() for c in url):
        raise InvalidInput("url", "contains whitespace")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise InvalidInput("url", "is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        shown = parts.scheme[:20] or "none"
        raise InvalidInput("url", f"scheme {shown!r} is not http or https")
    if not parts.hostname:
        raise InvalidInput("url", "has no host")
    if parts.username or parts.password:
        raise InvalidInput("url", "must not contain a user name or password")
    return url


def check_format(value: object) -> EndpointFormat:
    if value not in set(EndpointFormat):
        raise InvalidInput("format", f"{value!r} is not one of {', '.join(EndpointFormat)}")
    return EndpointFormat(str(value))


def url_hint(url: str) -> str:
    """What `notify list` shows of a URL: scheme, host and port; the path hidden."""
    parts = urlsplit(url)
    return (
        f"{parts.scheme}://{parts.netloc}/…"
        if parts.path not in ("", "/")
        else f"{parts.scheme}://{parts.netloc}/"
    )


def add_endpoint(
    session: Session,
    name: str,
    url: str,
    *,
    tenant_ref: str | uuid.UUID | None = None,
    events: list[str] | None = None,
    format: str = EndpointFormat.WEBHOOK,
) -> NewEndpoint:
    """Add an endpoint for one tenant (or every tenant) and the event types it wants (none: all).

    Checks everything first: InvalidInput (name, URL, format, event type), TenantNotFound,
    EndpointExists; nothing is stored then. A generic endpoint gets a fresh `whsec_` secret,
    returned here once and stored only encrypted (so is the URL). Raises EncryptionKeyMissing
    when no key is configured for a database server.
    """
    name = check_name(name)
    url = check_url(url)
    kind = check_format(format)
    wanted = parse_event_types(events)
    tenant = find_tenant(session, tenant_ref) if tenant_ref is not None else None
    if session.scalar(select(NotificationEndpoint.id).where(NotificationEndpoint.name == name)):
        raise EndpointExists(name)
    endpoint_id = uuid.uuid4()
    secret = secrets.new_signing_secret() if kind is EndpointFormat.WEBHOOK else None
    endpoint = NotificationEndpoint(
        id=endpoint_id,
        name=name,
        tenant_id=tenant.id if tenant else None,
        format=kind.value,
        url_hint=url_hint(url),
        url_encrypted=secrets.encrypt(url, endpoint_id, "url"),
        secret_encrypted=secrets.encrypt(secret, endpoint_id, "secret") if secret else None,
        event_types=wanted,
        enabled=True,
        created_at=clock.now(),
    )
    session.add(endpoint)
    session.flush()
    return NewEndpoint(endpoint, secret)


def find_endpoint(session: Session, name: str) -> NotificationEndpoint:
    endpoint = session.scalars(
        select(NotificationEndpoint)
        .where(NotificationEndpoint.name == name)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if endpoint is None:
        raise EndpointNotFound(name)
    return endpoint


def remove_endpoint(session: Session, name: str) -> None:
    """Remove the endpoint with its deliveries and their attempts. Raises EndpointNotFound."""
    endpoint = find_endpoint(session, name)
    delivery_ids = select(NotificationDelivery.id).where(
        NotificationDelivery.endpoint_id == endpoint.id
    )
    # Explicit, rather than trusting ON DELETE CASCADE to be on in every SQLite connection.
    session.execute(delete(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(delivery_ids)))
    session.execute(
        delete(NotificationDelivery).where(NotificationDelivery.endpoint_id == endpoint.id)
    )
    session.delete(endpoint)
    session.flush()


def enable_endpoint(session: Session, name: str) -> NotificationEndpoint:
    """Enable a disabled endpoint again; its pending deliveries resume in order."""
    endpoint = find_endpoint(session, name)
    endpoint.enabled = True
    endpoint.disabled_reason = None
    endpoint.disabled_at = None
    endpoint.failing_since = None
    session.flush()
    return endpoint


def list_endpoints(
    session: Session, tenant_ref: str | uuid.UUID | None = None
) -> list[dict[str, Any]]:
    """Every endpoint (or those that get `tenant_ref`'s events) with its backlog, as plain data:
    never the URL (only its host) nor the secret."""
    query = select(NotificationEndpoint, Tenant.slug).outerjoin(
        Tenant, Tenant.id == NotificationEndpoint.tenant_id
    )
    if tenant_ref is not None:
        tenant = find_tenant(session, tenant_ref)
        query = query.where(
            NotificationEndpoint.tenant_id.is_(None) | (NotificationEndpoint.tenant_id == tenant.id)
        )
    rows = session.execute(query.order_by(NotificationEndpoint.name)).all()
    backlog = {
        endpoint_id: (count, oldest)
        for endpoint_id, count, oldest in session.execute(
            select(
                NotificationDelivery.endpoint_id,
                func.count(),
                func.min(NotificationDelivery.created_at),
            )
            .where(NotificationDelivery.status == DeliveryStatus.PENDING)
            .group_by(NotificationDelivery.endpoint_id)
        )
    }
    delivered = dict(
        session.execute(
            select(NotificationDelivery.endpoint_id, func.max(NotificationDelivery.finished_at))
            .where(NotificationDelivery.status == DeliveryStatus.DELIVERED)
            .group_by(NotificationDelivery.endpoint_id)
        ).all()
    )
    now = clock.now()
    out = []
    for endpoint, slug in rows:
        count, oldest = backlog.get(endpoint.id, (0, None))
        out.append(
            {
                "name": endpoint.name,
                "tenant": slug,
                "format": endpoint.format,
                "url": endpoint.url_hint,
                "events": list(endpoint.event_types) or ["*"],
                "enabled": endpoint.enabled,
                "disabled_reason": endpoint.disabled_reason,
                "disabled_at": _iso(endpoint.disabled_at),
                "failing_since": _iso(endpoint.failing_since),
                "pending": count,
                "oldest_pending_seconds": round((now - _aware(oldest)).total_seconds(), 1)
                if oldest
                else None,
                "last_delivered_at": _iso(delivered.get(endpoint.id)),
                "created_at": _iso(endpoint.created_at),
            }
        )
    return out


def deliveries(
    session: Session, name: str, *, limit: int = 50, status: str | None = None
) -> list[dict[str, Any]]:
    """The endpoint's deliveries, newest first, with every attempt (status code or error) and
    the next retry. Raises EndpointNotFound, InvalidInput (limit, status)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInput("limit", f"{limit!r} is not a whole number >= 1")
    if status is not None and status not in set(DeliveryStatus):
        raise InvalidInput("status", f"{status!r} is not one of {', '.join(DeliveryStatus)}")
    endpoint = find_endpoint(session, name)
    query = (
        select(NotificationDelivery, OutboxEvent)
        .join(OutboxEvent, OutboxEvent.id == NotificationDelivery.event_id)
        .where(NotificationDelivery.endpoint_id == endpoint.id)
        .order_by(NotificationDelivery.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(NotificationDelivery.status == status)
    rows = session.execute(query).all()
    attempts: dict[int, list[dict[str, Any]]] = {}
    for attempt in session.scalars(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.delivery_id.in_([d.id for d, _ in rows]))
        .order_by(DeliveryAttempt.id)
    ):
        attempts.setdefault(attempt.delivery_id, []).append(
            {
                "at": _iso(attempt.at),
                "status_code": attempt.status_code,
                "error": attempt.error,
                "duration_ms": round(attempt.duration_ms, 1),
            }
        )
    return [
        {
            "webhook_id": str(event.id),
            "type": event.type,
            "stream": delivery.stream,
            "seq": delivery.seq,
            "status": delivery.status,
            "attempts": delivery.attempts,
            "last_status_code": delivery.last_status_code,
            "last_error": delivery.last_error,
            "next_attempt_at": _iso(delivery.next_attempt_at)
            if delivery.status == DeliveryStatus.PENDING
            else None,
            "created_at": _iso(delivery.created_at),
            "finished_at": _iso(delivery.finished_at),
            "history": attempts.get(delivery.id, []),
        }
        for delivery, event in rows
    ]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    return _aware(moment).isoformat() if moment is not None else None
