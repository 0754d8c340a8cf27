"""The serving tables: outcome counters and the batches already counted, API keys and their
tenants, and the routing change feed's generations."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from registry import clock
from registry.models.columns import Base, BigInt, UTCDateTime, one_of
from registry.models.enums import KeyRole


class OutcomeCounter(Base):
    """Online outcomes of one version in one time bucket, summed (no row per request)."""

    __tablename__ = "ai_outcome_counters"
    __table_args__ = (
        Index("uq_ai_outcome_counters_version_bucket", "version_id", "bucket_start", unique=True),
        Index("ix_ai_outcome_counters_tenant_bucket", "tenant_id", "bucket_start"),
    )

    # 64-bit: every upsert draws a sequence value, even when it only adds to an existing row.
    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_model_versions.id", ondelete="CASCADE"), nullable=False
    )
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # 64-bit counts (migration 0003): one tenant sending large counts must not overflow a bucket
    # (SQLite's INTEGER is 64-bit already).
    requests: Mapped[int] = mapped_column(BigInt, nullable=False, default=0)
    successes: Mapped[int] = mapped_column(BigInt, nullable=False, default=0)
    score_sum: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    score_sq_sum: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    score_count: Mapped[int] = mapped_column(BigInt, nullable=False, default=0)
    latency_ms_sum: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    latency_count: Mapped[int] = mapped_column(BigInt, nullable=False, default=0)


class OutcomeBatch(Base):
    """A batch of outcomes already counted, per tenant: a redelivered batch finds its row and is
    not counted again. Written in the same transaction as the counters it added to."""

    __tablename__ = "ai_outcome_batches"
    __table_args__ = (
        Index("uq_ai_outcome_batches_tenant_batch", "tenant_id", "batch_id", unique=True),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    batch_id: Mapped[str] = mapped_column(String(200), nullable=False)
    recorded: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    refused: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)


class ApiKey(Base):
    """An HTTP API key. Only the SHA-256 of the key is stored; `key_id` is its non-secret prefix,
    by which a presented key is looked up."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint(one_of("role", KeyRole), name="role"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), nullable=False, unique=True)
    key_id: Mapped[str] = mapped_column(String(32), nullable=False, unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    # False: the key sees only the tenants in api_key_tenants (none left means none).
    all_tenants: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ApiKeyTenant(Base):
    """A tenant a scoped key may see."""

    __tablename__ = "api_key_tenants"

    key_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class RoutingGeneration(Base):
    """Per tenant, a number that grows with every change of its traffic: the routing change feed.

    Written in the change's own transaction (`change_feed.note_change`), under the tenant's lock.
    A tenant without a row has generation 0 (nothing changed since the feed existed).
    """

    __tablename__ = "ai_routing_generations"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    # On SQLite (writers serialized) the number is global and grows in commit order, so a poller
    # asks for the rows above the highest it has seen; on PostgreSQL it only grows per tenant.
    generation: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)
