"""The notification tables: endpoints, the outbox, one delivery per event and endpoint, its
attempts, and the per-tenant sequence counters. Created by migration 0005 (endpoint names unique
per owner since 0008).

- `ai_notification_endpoints`: where to send (URL and secret encrypted, see `registry.notify.
  secrets`), for one tenant or all (tenant NULL), which event types (empty: all), in which
  format; enabled, or disabled with the reason; a lease held by the one task delivering to it.
  Its name is unique among its tenant's endpoints (or among the global ones).
- `ai_notification_outbox`: one row per notifiable change, written in the change's transaction,
  numbered per stream (a tenant, or "global" for an event without one) with no gaps.
- `ai_notification_deliveries`: one row per event and matching endpoint, made in the same
  transaction; pending until delivered or given up.
- `ai_notification_attempts`: every HTTP attempt of a delivery, with its status code or error.
- `ai_notification_streams`: the last sequence number per stream; its row lock orders emitters.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from registry import clock
from registry.models import Base, BigInt, JSONType, UTCDateTime, one_of
from registry.notify.types import DeliveryStatus, EndpointFormat


class NotificationEndpoint(Base):
    __tablename__ = "ai_notification_endpoints"
    __table_args__ = (
        CheckConstraint(one_of("format", EndpointFormat), name="format"),
        # A name is unique per owner: per tenant, and apart from them among the global endpoints
        # (NULL tenants are distinct in a UNIQUE index, hence the partial one). Unique across
        # tenants, a taken name would tell a tenant what another one calls its endpoints.
        Index("uq_ai_notification_endpoints_tenant_name", "tenant_id", "name", unique=True),
        Index(
            "uq_ai_notification_endpoints_global_name",
            "name",
            unique=True,
            postgresql_where=text("tenant_id IS NULL"),
            sqlite_where=text("tenant_id IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    # NULL: every tenant's events.
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True, index=True
    )
    format: Mapped[str] = mapped_column(String(16), nullable=False)
    # Scheme and host only, for display: the full URL may carry a token (Slack's always does).
    url_hint: Mapped[str] = mapped_column(Text, nullable=False)
    url_encrypted: Mapped[str] = mapped_column(Text, nullable=False)
    # The whsec_ signing secret, encrypted; NULL for Slack (which does not verify signatures).
    secret_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    event_types: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Since when every attempt failed (NULL after a success): long enough, and it is disabled.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)


class OutboxEvent(Base):
    __tablename__ = "ai_notification_outbox"
    __table_args__ = (
        Index("uq_ai_notification_outbox_stream_seq", "stream", "seq", unique=True),
        Index("ix_ai_notification_outbox_tenant_created", "tenant_id", "created_at"),
    )

    # Sent as `webhook-id`: the same on every attempt, unique across databases.
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True
    )
    stream: Mapped[str] = mapped_column(String(64), nullable=False)  # tenant id, or "global"
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    # Set by emitters that may run twice for one fact (a redelivered message): once per key.
    dedupe_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)


class NotificationDelivery(Base):
    __tablename__ = "ai_notification_deliveries"
    __table_args__ = (
        CheckConstraint(one_of("status", DeliveryStatus), name="status"),
        Index(
            "uq_ai_notification_deliveries_event_endpoint", "event_id", "endpoint_id", unique=True
        ),
        # The head of each (endpoint, stream) queue, and what is due.
        Index("ix_ai_notification_deliveries_queue", "endpoint_id", "status", "stream", "seq"),
        Index("ix_ai_notification_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_notification_outbox.id", ondelete="CASCADE"), nullable=False
    )
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_notification_endpoints.id", ondelete="CASCADE"), nullable=False
    )
    stream: Mapped[str] = mapped_column(String(64), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DeliveryAttempt(Base):
    __tablename__ = "ai_notification_attempts"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("ai_notification_deliveries.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)


class NotificationStream(Base):
    __tablename__ = "ai_notification_streams"

    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
