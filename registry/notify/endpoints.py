"""Notification endpoints: add (the secret is returned once), list, show, enable, disable,
remove, and their deliveries. Every input from outside is checked before anything is stored.

Every function takes `visible`, the tenant ids its caller may see (an HTTP key scoped to some
tenants), or None for every tenant (the CLI, an unscoped key). An endpoint outside them is
reported exactly as one that does not exist; a global endpoint is visible only with None.

A name is unique per owner: among a tenant's endpoints, and among the global ones. Functions
that take a name also take its `owner` (a tenant, GLOBAL, or None: whichever endpoint of that
name the caller sees, refused as ambiguous when it sees more than one; `registry.notify.owners`),
so another tenant's endpoint of the same name is never found, changed, or told of."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry import clock, records, validation
from registry.errors import InvalidInput, TenantNotFound
from registry.models import Tenant
from registry.notify import outbox, secrets
from registry.notify.errors import EndpointExists
from registry.notify.models import (
    DeliveryAttempt,
    NotificationDelivery,
    NotificationEndpoint,
    OutboxEvent,
)
from registry.notify.owners import Owner, Visible, find_endpoint, owned_by, sees, tenant_slugs
from registry.notify.types import DeliveryStatus, EndpointFormat, EventType, parse_event_types
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
    visible: Visible = None,
) -> NewEndpoint:
    """Add an endpoint for one tenant (or every tenant) and the event types it wants (none: all).

    Checks everything first: InvalidInput (name, URL, format, event type; no tenant named by a
    caller limited to `visible`), TenantNotFound (also outside `visible`), EndpointExists (the
    name taken by the same owner: the tenant, or among the global endpoints; another tenant's
    endpoint of that name is no obstacle, and is not told of); nothing is stored then. Two adds
    racing for one name: the database keeps one, the other raises EndpointExists. A generic
    endpoint gets a fresh `whsec_` secret, returned here once and stored only encrypted (so is
    the URL). Raises EncryptionKeyMissing when no key is configured for a database server.
    """
    name = check_name(name)
    url = check_url(url)
    kind = check_format(format)
    wanted = parse_event_types(events)
    if tenant_ref is None and visible is not None:
        raise InvalidInput("tenant", "a caller limited to some tenants must name one of them")
    tenant = find_tenant(session, tenant_ref) if tenant_ref is not None else None
    if tenant is not None and visible is not None and tenant.id not in visible:
        raise TenantNotFound(str(tenant_ref))
    owned = owned_by(tenant.id if tenant else None)
    taken = select(NotificationEndpoint.id).where(NotificationEndpoint.name == name, owned)
    if session.scalar(taken):
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
    try:
        with session.begin_nested():  # a concurrent add of the name: only this is undone
            session.add(endpoint)
            session.flush()
    except IntegrityError:
        if session.scalar(taken):
            raise EndpointExists(name) from None
        raise
    return NewEndpoint(endpoint, secret)


def added_record(session: Session, added: NewEndpoint) -> dict[str, Any]:
    """A new endpoint as `list_endpoints` shows it, with its signing secret: the one time it is
    shown (None for Slack)."""
    return {**endpoint_record(session, added.endpoint), "secret": added.secret}


def remove_endpoint(
    session: Session, name: str, *, owner: Owner = None, visible: Visible = None
) -> None:
    """Remove the endpoint with its deliveries and their attempts. Raises what `find_endpoint`
    raises."""
    endpoint = find_endpoint(session, name, owner=owner, visible=visible)
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


def enable_endpoint(
    session: Session, name: str, *, owner: Owner = None, visible: Visible = None
) -> NotificationEndpoint:
    """Enable a disabled endpoint again; its pending deliveries resume in order, asked of the
    worker after the commit (what it missed while disabled is sent by `registry.notify.replay`).
    Idempotent. Raises what `find_endpoint` raises."""
    endpoint = find_endpoint(session, name, owner=owner, visible=visible)
    was_disabled = not endpoint.enabled
    endpoint.enabled = True
    endpoint.disabled_reason = None
    endpoint.disabled_at = None
    endpoint.failing_since = None
    session.flush()
    if was_disabled:
        outbox.deliver_after_commit(session, [endpoint.id])
    return endpoint


def disable_endpoint(
    session: Session,
    name: str,
    *,
    actor: str,
    reason: str | None = None,
    owner: Owner = None,
    visible: Visible = None,
) -> NotificationEndpoint:
    """Stop sending to the endpoint: its pending deliveries wait, and events written while it
    is disabled make none for it (until `replay`). Idempotent: a disabled endpoint keeps its
    first reason. The other endpoints are told (`disable`). Raises InvalidInput (actor, reason)
    and what `find_endpoint` raises."""
    actor, reason = validation.actor(actor), validation.reason(reason)
    endpoint = find_endpoint(session, name, owner=owner, visible=visible)
    if endpoint.enabled:
        why = f"disabled by {actor}" + (f": {reason}" if reason else "")
        disable(session, endpoint, why, clock.now())
    return endpoint


def disable(session: Session, endpoint: NotificationEndpoint, reason: str, now: datetime) -> None:
    """Stop sending to the endpoint, and tell the tenant's other endpoints (`endpoint.disabled`):
    whether a receiver's 410, failing too long, or an operator disabled it, those watching hear
    of it."""
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    endpoint.disabled_at = now
    endpoint.leased_until = None
    session.flush()  # before the notice: it must not go to this endpoint
    tenant = session.get(Tenant, endpoint.tenant_id) if endpoint.tenant_id else None
    outbox.emit(
        session,
        endpoint.tenant_id,
        EventType.ENDPOINT_DISABLED,
        {
            "tenant": {"id": str(tenant.id), "slug": tenant.slug} if tenant else None,
            "endpoint": endpoint.name,
            "reason": reason,
        },
    )


def list_endpoints(
    session: Session, tenant_ref: str | uuid.UUID | None = None, *, visible: Visible = None
) -> list[dict[str, Any]]:
    """Every endpoint the caller sees (or those that get `tenant_ref`'s events) with its
    backlog, as plain data (`registry.records.notification_endpoint`). Raises TenantNotFound,
    also for a tenant outside `visible`."""
    query = select(NotificationEndpoint)
    if tenant_ref is not None:
        tenant = find_tenant(session, tenant_ref)
        if visible is not None and tenant.id not in visible:
            raise TenantNotFound(str(tenant_ref))
        query = query.where(
            NotificationEndpoint.tenant_id.is_(None) | (NotificationEndpoint.tenant_id == tenant.id)
        )
    found = [
        e for e in session.scalars(query.order_by(NotificationEndpoint.name)) if sees(visible, e)
    ]
    return endpoint_records(session, found)


def show_endpoint(
    session: Session, name: str, *, owner: Owner = None, visible: Visible = None
) -> dict[str, Any]:
    """One endpoint as `list_endpoints` shows it. Raises what `find_endpoint` raises."""
    return endpoint_record(session, find_endpoint(session, name, owner=owner, visible=visible))


def endpoint_record(session: Session, endpoint: NotificationEndpoint) -> dict[str, Any]:
    """The endpoint as `list_endpoints` shows it (one already found: after a change, say)."""
    [record] = endpoint_records(session, [endpoint])
    return record


def endpoint_records(
    session: Session, found: Sequence[NotificationEndpoint]
) -> list[dict[str, Any]]:
    """These endpoints as plain data, with their backlog and last delivery, in their order."""
    ids = [e.id for e in found]
    if not ids:
        return []
    slugs = tenant_slugs(session, found)
    backlog = {
        endpoint_id: (count, oldest)
        for endpoint_id, count, oldest in session.execute(
            select(
                NotificationDelivery.endpoint_id,
                func.count(),
                func.min(NotificationDelivery.created_at),
            )
            .where(
                NotificationDelivery.status == DeliveryStatus.PENDING,
                NotificationDelivery.endpoint_id.in_(ids),
            )
            .group_by(NotificationDelivery.endpoint_id)
        )
    }
    delivered = dict(
        session.execute(
            select(NotificationDelivery.endpoint_id, func.max(NotificationDelivery.finished_at))
            .where(
                NotificationDelivery.status == DeliveryStatus.DELIVERED,
                NotificationDelivery.endpoint_id.in_(ids),
            )
            .group_by(NotificationDelivery.endpoint_id)
        ).all()
    )
    now = clock.now()
    out = []
    for endpoint in found:
        count, oldest = backlog.get(endpoint.id, (0, None))
        last = delivered.get(endpoint.id)
        out.append(
            records.notification_endpoint(
                endpoint,
                slugs.get(endpoint.tenant_id) if endpoint.tenant_id else None,
                pending=count,
                oldest_pending_seconds=round((now - _aware(oldest)).total_seconds(), 1)
                if oldest
                else None,
                last_delivered_at=_aware(last) if last else None,
            )
        )
    return out


def deliveries(
    session: Session,
    name: str,
    *,
    limit: int = 50,
    status: str | None = None,
    owner: Owner = None,
    visible: Visible = None,
) -> list[dict[str, Any]]:
    """The endpoint's deliveries, newest first, with every attempt (status code or error) and
    the next retry (`registry.records.notification_delivery`). Raises InvalidInput (limit,
    status) and what `find_endpoint` raises."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInput("limit", f"{limit!r} is not a whole number >= 1")
    if status is not None and status not in set(DeliveryStatus):
        raise InvalidInput("status", f"{status!r} is not one of {', '.join(DeliveryStatus)}")
    endpoint = find_endpoint(session, name, owner=owner, visible=visible)
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
    attempts: dict[int, list[DeliveryAttempt]] = {}
    for attempt in session.scalars(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.delivery_id.in_([d.id for d, _ in rows]))
        .order_by(DeliveryAttempt.id)
    ):
        attempts.setdefault(attempt.delivery_id, []).append(attempt)
    return [
        records.notification_delivery(delivery, event, attempts.get(delivery.id, []))
        for delivery, event in rows
    ]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
