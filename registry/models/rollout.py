"""The rollout tables: tenants and their policy, fine-tuning runs and their evaluations, model
versions, deployments, and the audit trail of what changed."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    false,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from registry import clock
from registry.models.columns import Base, JSONType, UTCDateTime, one_of
from registry.models.enums import DeploymentStatus, Metric, Recommendation, Strategy, VersionStatus


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    slug: Mapped[str] = mapped_column(String(63), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=clock.now)


class DeploymentPolicy(Base):
    """How a tenant's new versions go live, and how its canaries are judged."""

    __tablename__ = "ai_deployment_policies"
    __table_args__ = (
        CheckConstraint(one_of("strategy", Strategy), name="strategy"),
        CheckConstraint("canary_percent BETWEEN 1 AND 99", name="canary_percent"),
        CheckConstraint(
            "auto_promote_threshold IS NULL OR auto_promote_threshold BETWEEN 0 AND 1",
            name="threshold",
        ),
        CheckConstraint("min_samples >= 1", name="min_samples"),
        CheckConstraint("bake_seconds >= 0", name="bake_seconds"),
        CheckConstraint("progress_deadline_seconds > 0", name="deadline"),
        CheckConstraint(one_of("metric", Metric), name="metric"),
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
        CheckConstraint(one_of("recommendation", Recommendation), name="rec"),
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


PRODUCTION_ONLY = "status = 'production'"


class ModelVersion(Base):
    __tablename__ = "ai_model_versions"
    __table_args__ = (
        CheckConstraint("traffic_percent BETWEEN 0 AND 100", name="traffic_percent"),
        CheckConstraint(one_of("status", VersionStatus), name="status"),
        # Only production versions carry traffic, and a production version carries some.
        CheckConstraint(
            "(status = 'production') = (traffic_percent > 0)", name="traffic_matches_status"
        ),
        CheckConstraint("version >= 1", name="version_positive"),
        Index("uq_ai_model_versions_tenant_version", "tenant_id", "version", unique=True),
        Index("ix_ai_model_versions_tenant_status", "tenant_id", "status"),
        # What every change reads under the tenant's lock (`in_production`): a few rows per
        # tenant however long its history, in version order.
        Index(
            "ix_ai_model_versions_tenant_production",
            "tenant_id",
            "version",
            postgresql_where=text(PRODUCTION_ONLY),
            sqlite_where=text(PRODUCTION_ONLY),
        ),
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


def in_production(status: Any) -> ColumnElement[bool]:
    """`status = 'production'`, the value written into the SQL rather than bound. A prepared
    statement's generic plan then knows the value is rare and reads the (tenant_id, status)
    index; with a parameter it guesses half of a tenant's versions and scans the table, a cost
    that grows with the tenant's history. Written when the statement is compiled (and cached),
    not at each execution as a `literal_execute` parameter would be."""
    return status == literal_column(f"'{VersionStatus.PRODUCTION.value}'")


class Deployment(Base):
    """One per run: what happened when its version was (or was not) taken live."""

    __tablename__ = "ai_deployments"
    __table_args__ = (
        CheckConstraint(one_of("strategy", Strategy), name="strategy"),
        CheckConstraint(one_of("status", DeploymentStatus), name="status"),
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
