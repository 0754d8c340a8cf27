"""The work tables: what was accepted and must end in a final state with its reason — job
events, operators' operations — and the webhook deliveries already seen."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from registry import clock
from registry.models.columns import Base, JSONType, UTCDateTime, one_of
from registry.models.enums import EventState, OperationKind, OperationStatus


class JobEvent(Base):
    """A "fine-tuning job finished" event, from acceptance to its end: never silently dropped."""

    __tablename__ = "ai_job_events"
    __table_args__ = (
        CheckConstraint(one_of("state", EventState), name="state"),
        Index("ix_ai_job_events_state_updated", "state", "updated_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    openai_job_id: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    tenant_hint: Mapped[str | None] = mapped_column(String(63), nullable=True)
    source: Mapped[str] = mapped_column(String(32), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default=EventState.RECEIVED)
    outcome: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Set while an attempt runs; an attempt that finds it set knows the last one died midway.
    in_flight_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    crashes: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)
    # Set once the event was handed to the broker; NULL rows are re-enqueued by the reconciler.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Operation(Base):
    """An operator's promote or rollback, queued for the worker."""

    __tablename__ = "ai_operations"
    __table_args__ = (
        CheckConstraint(one_of("kind", OperationKind), name="kind"),
        CheckConstraint(one_of("status", OperationStatus), name="status"),
        CheckConstraint(
            "traffic_percent IS NULL OR traffic_percent BETWEEN 1 AND 100", name="traffic"
        ),
        Index("ix_ai_operations_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    traffic_percent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    # Why the operator asked; kept in the audit trail when the operation runs.
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=OperationStatus.QUEUED)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # What the operator decided against (migration 0007; NULL on older rows, which are not
    # checked): the tenant's split when it was queued, {"<version>": percent}, and the id of
    # the newest traffic event then (NULL: none yet). See `registry.operations`.
    queued_split: Mapped[dict[str, int] | None] = mapped_column(JSONType, nullable=True)
    queued_after_event: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Run even if the split changed since it was queued (`--force`).
    force: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    # Not started by then, it ends expired (FTDEPLOY_OPERATION_TTL_SECONDS after queueing).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set once its message was handed to the broker; the reconciler sends those left NULL.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebhookDelivery(Base):
    """An OpenAI webhook delivery, kept so that a redelivery (same webhook-id) is a no-op."""

    __tablename__ = "ai_webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    event_type: Mapped[str] = mapped_column(String(100), nullable=False)
    openai_job_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)
