"""The schema, as SQLAlchemy 2 typed models. Migrations in `migrations/` create it; a test checks
that they agree (`alembic check`).

Table and column names of the seed are kept (`ai_model_versions`, `ai_deployments`, …).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from registry import clock

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored with time zone, always handed back UTC-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL, JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Strategy(StrEnum):
    IMMEDIATE = "immediate"
    CANARY = "canary"
    BLUE_GREEN = "blue_green"


class VersionStatus(StrEnum):
    STAGING = "staging"
    PRODUCTION = "production"
    DEPRECATED = "deprecated"
    ARCHIVED = "archived"


class DeploymentStatus(StrEnum):
    AWAITING_EVALUATION = "awaiting_evaluation"
    REJECTED = "rejected"
    STAGED = "staged"  # blue-green, waiting for an operator's switch
    ACTIVE = "active"  # serving, possibly as a canary
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"  # left production because a newer version took it


class Metric(StrEnum):
    """What a canary is judged on."""

    SUCCESS_RATE = "success_rate"
    SCORE = "score"


class Recommendation(StrEnum):
    APPROVE = "approve"
    REVIEW = "review"
    REJECT = "reject"


class OperationKind(StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class KeyRole(StrEnum):
    """An API key's role, in order: each can do what the ones before it can."""

    SERVE = "serve"
    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"


class OperationStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STALE = "stale"  # the tenant's split changed after it was queued (and it was not forced)
    EXPIRED = "expired"  # not started within its time to live
    CANCELLED = "cancelled"  # an operator cancelled it while it was queued


# Every status an operation ends in; nothing changes it afterwards.
FINAL_OPERATION_STATUSES = frozenset(
    {
        OperationStatus.SUCCEEDED,
        OperationStatus.FAILED,
        OperationStatus.STALE,
        OperationStatus.EXPIRED,
        OperationStatus.CANCELLED,
    }
)


class EventState(StrEnum):
    RECEIVED = "received"  # accepted, being worked on (or waiting for a retry)
    DONE = "done"
    FAILED = "failed"


def _one_of(column: str, enum: type[StrEnum]) -> str:
    values = ", ".join(f"'{member.value}'" for member in enum)
    return f"{column} IN ({values})"


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    slug: Mapped[str] = mapped_column(String(63), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)


class DeploymentPolicy(Base):
    """How a tenant's new versions go live, and how its canaries are judged."""

    __tablename__ = "ai_deployment_policies"
    __table_args__ = (
        CheckConstraint(_one_of("strategy", Strategy), name="strategy"),
        CheckConstraint("canary_percent BETWEEN 1 AND 99", name="canary_percent"),
        CheckConstraint(
            "auto_promote_threshold IS NULL OR auto_promote_threshold BETWEEN 0 AND 1",
            name="threshold",
        ),
        CheckConstraint("min_samples >= 1", name="min_samples"),
        CheckConstraint("bake_seconds >= 0", name="bake_seconds"),
        CheckConstraint("progress_deadline_seconds > 0", name="deadline"),
        CheckConstraint(_one_of("metric", Metric), name="metric"),
        CheckConstraint("keep_deprecated >= 0", name="keep_deprecated"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    strategy: Mapped[str] = mapped_column(String(16), nullable=False, default=Strategy.IMMEDIATE)
    canary_percent: Mapped[int] = mapped_column(Integer, nullable=False, default=10)
    # Progressive steps, e.g. [10, 25, 50, 100]; NULL means one jump from canary_percent to 100.
    canary_steps: Mapped[list[int] | None] = mapped_column(JSONType, nullable=True)
    auto_promote: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    auto_promote_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    metric: Mapped[str] = mapped_column(String(16), nullable=False, default=Metric.SUCCESS_RATE)
    min_samples: Mapped[int] = mapped_column(Integer, nullable=False, default=100)
    bake_seconds: Mapped[int] = mapped_column(Integer, nullable=False, default=300)
    progress_deadline_seconds: Mapped[int] = mapped_column(Integer, nullable=False, default=86400)
    auto_rollback: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    require_evaluation: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    keep_deprecated: Mapped[int] = mapped_column(Integer, nullable=False, default=3)
    # Held by an operator: the sweep leaves the tenant's canaries where they are (migration 0006).
    paused: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    paused_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)


class FinetuningRun(Base):
    """One OpenAI fine-tuning job, as last seen."""

    __tablename__ = "ai_finetuning_runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )
    openai_job_id: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    base_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Evaluation(Base):
    __tablename__ = "ai_finetuning_evaluations"
    __table_args__ = (
        CheckConstraint(_one_of("recommendation", Recommendation), name="rec"),
        # A resume is requested, then sent, then ended (with its outcome); none without the first.
        CheckConstraint(
            "resume_sent_at IS NULL OR resume_requested_at IS NOT NULL", name="resume_sent"
        ),
        CheckConstraint(
            "resume_ended_at IS NULL OR "
            "(resume_requested_at IS NOT NULL AND resume_outcome IS NOT NULL)",
            name="resume_ended",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_finetuning_runs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    recommendation: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)
    # Asking the worker to resume the run's deployment (`registry.jobs.resumes`): NULL when the
    # evaluation was recorded without it; the reconciler re-sends one not sent or lost.
    resume_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resume_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resume_ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resume_outcome: Mapped[str | None] = mapped_column(String(2000), nullable=True)


class ModelVersion(Base):
    __tablename__ = "ai_model_versions"
    __table_args__ = (
        CheckConstraint("traffic_percent BETWEEN 0 AND 100", name="traffic_percent"),
        CheckConstraint(_one_of("status", VersionStatus), name="status"),
        # Only production versions carry traffic, and a production version carries some.
        CheckConstraint(
            "(status = 'production') = (traffic_percent > 0)", name="traffic_matches_status"
        ),
        CheckConstraint("version >= 1", name="version_positive"),
        Index("uq_ai_model_versions_tenant_version", "tenant_id", "version", unique=True),
        Index("ix_ai_model_versions_tenant_status", "tenant_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(Text, nullable=False)
    model_id: Mapped[str] = mapped_column(Text, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=VersionStatus.STAGING)
    # One version per run: a redelivered event cannot register twice.
    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_finetuning_runs.id"), nullable=False, unique=True
    )
    evaluation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ai_finetuning_evaluations.id"), nullable=True, index=True
    )
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    traffic_percent: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)
    deployed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When it last left production: rollback returns the version that left most recently.
    deprecated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set when the version was rolled back: such a version is never restored by a rollback.
    rolled_back_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Deployment(Base):
    """One per run: what happened when its version was (or was not) taken live."""

    __tablename__ = "ai_deployments"
    __table_args__ = (
        CheckConstraint(_one_of("strategy", Strategy), name="strategy"),
        CheckConstraint(_one_of("status", DeploymentStatus), name="status"),
        CheckConstraint("initial_traffic BETWEEN 0 AND 100", name="initial_traffic"),
        Index("ix_ai_deployments_tenant_created", "tenant_id", "created_at"),
        Index("ix_ai_deployments_status", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_finetuning_runs.id"), nullable=False, unique=True
    )
    # NULL while awaiting evaluation or when rejected: no version was registered.
    version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ai_model_versions.id"), nullable=True, unique=True
    )
    strategy: Mapped[str] = mapped_column(String(16), nullable=False)
    initial_traffic: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    auto_promote: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    auto_promote_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(24), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When the canary's current step began: the analysis window starts here.
    step_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)


class TrafficEvent(Base):
    """The audit trail: one row per change of a tenant's versions or traffic."""

    __tablename__ = "ai_traffic_events"
    __table_args__ = (Index("ix_ai_traffic_events_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    # {"<version>": percent} of the production versions, before and after.
    split_before: Mapped[dict[str, int]] = mapped_column(JSONType, nullable=False)
    split_after: Mapped[dict[str, int]] = mapped_column(JSONType, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)


class AuditEvent(Base):
    """The audit trail of what is not a traffic change: policy changes (before -> after of the
    changed fields), pauses and resumes, refused claims on job events. Written in the same
    transaction as the change it records."""

    __tablename__ = "ai_audit_events"
    __table_args__ = (Index("ix_ai_audit_events_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # NULL for a refusal about a job whose tenant is not known.
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True
    )
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    subject: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # {"field": {"before": …, "after": …}} for a policy change; what was refused for a refusal.
    changes: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)


class JobEvent(Base):
    """A "fine-tuning job finished" event, from acceptance to its end: never silently dropped."""

    __tablename__ = "ai_job_events"
    __table_args__ = (
        CheckConstraint(_one_of("state", EventState), name="state"),
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
        CheckConstraint(_one_of("kind", OperationKind), name="kind"),
        CheckConstraint(_one_of("status", OperationStatus), name="status"),
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


COUNT = BigInteger().with_variant(Integer, "sqlite")


class OutcomeCounter(Base):
    """Online outcomes of one version in one time bucket, summed (no row per request)."""

    __tablename__ = "ai_outcome_counters"
    __table_args__ = (
        Index("uq_ai_outcome_counters_version_bucket", "version_id", "bucket_start", unique=True),
        Index("ix_ai_outcome_counters_tenant_bucket", "tenant_id", "bucket_start"),
    )

    # 64-bit: every upsert draws a sequence value, even when it only adds to an existing row.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_model_versions.id", ondelete="CASCADE"), nullable=False
    )
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # 64-bit counts (migration 0003): one tenant sending large counts must not overflow a bucket
    # (SQLite's INTEGER is 64-bit already).
    requests: Mapped[int] = mapped_column(COUNT, nullable=False, default=0)
    successes: Mapped[int] = mapped_column(COUNT, nullable=False, default=0)
    score_sum: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    score_sq_sum: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    score_count: Mapped[int] = mapped_column(COUNT, nullable=False, default=0)
    latency_ms_sum: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    latency_count: Mapped[int] = mapped_column(COUNT, nullable=False, default=0)


class WebhookDelivery(Base):
    """An OpenAI webhook delivery, kept so that a redelivery (same webhook-id) is a no-op."""

    __tablename__ = "ai_webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    event_type: Mapped[str] = mapped_column(String(100), nullable=False)
    openai_job_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)


class OutcomeBatch(Base):
    """A batch of outcomes already counted, per tenant: a redelivered batch finds its row and is
    not counted again. Written in the same transaction as the counters it added to."""

    __tablename__ = "ai_outcome_batches"
    __table_args__ = (
        Index("uq_ai_outcome_batches_tenant_batch", "tenant_id", "batch_id", unique=True),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
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
    __table_args__ = (CheckConstraint(_one_of("role", KeyRole), name="role"),)

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
