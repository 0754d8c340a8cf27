"""Initial schema: tenants, policies, runs, evaluations, versions, deployments, audit trail,
job events, operations, outcome counters and webhook deliveries.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 08:08:16.438305
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON text elsewhere (as registry.models.JSONType; not imported from there).
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:

    op.create_table(
        "ai_job_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("openai_job_id", sa.String(length=200), nullable=False),
        sa.Column("tenant_hint", sa.String(length=63), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("in_flight_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("crashes", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('received', 'done', 'failed')", name=op.f("ck_ai_job_events_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_job_events")),
        sa.UniqueConstraint("openai_job_id", name=op.f("uq_ai_job_events_openai_job_id")),
    )
    with op.batch_alter_table("ai_job_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ai_job_events_state_updated", ["state", "updated_at"], unique=False
        )

    op.create_table(
        "ai_webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("webhook_id", sa.String(length=200), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("openai_job_id", sa.String(length=200), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_webhook_deliveries")),
        sa.UniqueConstraint("webhook_id", name=op.f("uq_ai_webhook_deliveries_webhook_id")),
    )
    with op.batch_alter_table("ai_webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_webhook_deliveries_openai_job_id"), ["openai_job_id"], unique=False
        )

    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("slug", name=op.f("uq_tenants_slug")),
    )
    op.create_table(
        "ai_deployment_policies",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("strategy", sa.String(length=16), nullable=False),
        sa.Column("canary_percent", sa.Integer(), nullable=False),
        sa.Column("canary_steps", JSON_TYPE, nullable=True),
        sa.Column("auto_promote", sa.Boolean(), nullable=False),
        sa.Column("auto_promote_threshold", sa.Float(), nullable=True),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("min_samples", sa.Integer(), nullable=False),
        sa.Column("bake_seconds", sa.Integer(), nullable=False),
        sa.Column("progress_deadline_seconds", sa.Integer(), nullable=False),
        sa.Column("auto_rollback", sa.Boolean(), nullable=False),
        sa.Column("require_evaluation", sa.Boolean(), nullable=False),
        sa.Column("keep_deprecated", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "metric IN ('success_rate', 'score')", name=op.f("ck_ai_deployment_policies_metric")
        ),
        sa.CheckConstraint(
            "strategy IN ('immediate', 'canary', 'blue_green')",
            name=op.f("ck_ai_deployment_policies_strategy"),
        ),
        sa.CheckConstraint(
            "auto_promote_threshold IS NULL OR auto_promote_threshold BETWEEN 0 AND 1",
            name=op.f("ck_ai_deployment_policies_threshold"),
        ),
        sa.CheckConstraint(
            "bake_seconds >= 0", name=op.f("ck_ai_deployment_policies_bake_seconds")
        ),
        sa.CheckConstraint(
            "canary_percent BETWEEN 1 AND 99", name=op.f("ck_ai_deployment_policies_canary_percent")
        ),
        sa.CheckConstraint(
            "keep_deprecated >= 0", name=op.f("ck_ai_deployment_policies_keep_deprecated")
        ),
        sa.CheckConstraint("min_samples >= 1", name=op.f("ck_ai_deployment_policies_min_samples")),
        sa.CheckConstraint(
            "progress_deadline_seconds > 0", name=op.f("ck_ai_deployment_policies_deadline")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_deployment_policies_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_ai_deployment_policies")),
    )
    op.create_table(
        "ai_finetuning_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("openai_job_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=True),
        sa.Column("fine_tuned_model", sa.Text(), nullable=True),
        sa.Column("trained_tokens", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result_metrics", JSON_TYPE, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_finetuning_runs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_finetuning_runs")),
        sa.UniqueConstraint("openai_job_id", name=op.f("uq_ai_finetuning_runs_openai_job_id")),
    )
    with op.batch_alter_table("ai_finetuning_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_finetuning_runs_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "ai_operations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("traffic_percent", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result", JSON_TYPE, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('promote', 'rollback')", name=op.f("ck_ai_operations_kind")),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')",
            name=op.f("ck_ai_operations_status"),
        ),
        sa.CheckConstraint(
            "traffic_percent IS NULL OR traffic_percent BETWEEN 1 AND 100",
            name=op.f("ck_ai_operations_traffic"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_operations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_operations")),
    )
    with op.batch_alter_table("ai_operations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ai_operations_tenant_created", ["tenant_id", "created_at"], unique=False
        )

    op.create_table(
        "ai_traffic_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("split_before", JSON_TYPE, nullable=False),
        sa.Column("split_after", JSON_TYPE, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_traffic_events_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_traffic_events")),
    )
    with op.batch_alter_table("ai_traffic_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ai_traffic_events_tenant_created", ["tenant_id", "created_at"], unique=False
        )

    op.create_table(
        "ai_finetuning_evaluations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("metrics", JSON_TYPE, nullable=False),
        sa.Column("recommendation", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "recommendation IN ('approve', 'review', 'reject')",
            name=op.f("ck_ai_finetuning_evaluations_rec"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["ai_finetuning_runs.id"],
            name=op.f("fk_ai_finetuning_evaluations_run_id_ai_finetuning_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_finetuning_evaluations")),
    )
    with op.batch_alter_table("ai_finetuning_evaluations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_finetuning_evaluations_run_id"), ["run_id"], unique=False
        )

    op.create_table(
        "ai_model_versions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("evaluation_id", sa.Uuid(), nullable=True),
        sa.Column("metrics", JSON_TYPE, nullable=False),
        sa.Column("traffic_percent", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deprecated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rolled_back_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(status = 'production') = (traffic_percent > 0)",
            name=op.f("ck_ai_model_versions_traffic_matches_status"),
        ),
        sa.CheckConstraint(
            "status IN ('staging', 'production', 'deprecated', 'archived')",
            name=op.f("ck_ai_model_versions_status"),
        ),
        sa.CheckConstraint(
            "traffic_percent BETWEEN 0 AND 100", name=op.f("ck_ai_model_versions_traffic_percent")
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_ai_model_versions_version_positive")),
        sa.ForeignKeyConstraint(
            ["evaluation_id"],
            ["ai_finetuning_evaluations.id"],
            name=op.f("fk_ai_model_versions_evaluation_id_ai_finetuning_evaluations"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["ai_finetuning_runs.id"],
            name=op.f("fk_ai_model_versions_run_id_ai_finetuning_runs"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_model_versions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_model_versions")),
        sa.UniqueConstraint("run_id", name=op.f("uq_ai_model_versions_run_id")),
    )
    with op.batch_alter_table("ai_model_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_model_versions_evaluation_id"), ["evaluation_id"], unique=False
        )
        batch_op.create_index(
            "ix_ai_model_versions_tenant_status", ["tenant_id", "status"], unique=False
        )
        batch_op.create_index(
            "uq_ai_model_versions_tenant_version", ["tenant_id", "version"], unique=True
        )

    op.create_table(
        "ai_deployments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("version_id", sa.Uuid(), nullable=True),
        sa.Column("strategy", sa.String(length=16), nullable=False),
        sa.Column("initial_traffic", sa.Integer(), nullable=False),
        sa.Column("auto_promote", sa.Boolean(), nullable=False),
        sa.Column("auto_promote_threshold", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('awaiting_evaluation', 'rejected', 'staged', 'active', 'promoted', 'rolled_back', 'superseded')",
            name=op.f("ck_ai_deployments_status"),
        ),
        sa.CheckConstraint(
            "strategy IN ('immediate', 'canary', 'blue_green')",
            name=op.f("ck_ai_deployments_strategy"),
        ),
        sa.CheckConstraint(
            "initial_traffic BETWEEN 0 AND 100", name=op.f("ck_ai_deployments_initial_traffic")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["ai_finetuning_runs.id"],
            name=op.f("fk_ai_deployments_run_id_ai_finetuning_runs"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_deployments_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["ai_model_versions.id"],
            name=op.f("fk_ai_deployments_version_id_ai_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_deployments")),
        sa.UniqueConstraint("run_id", name=op.f("uq_ai_deployments_run_id")),
        sa.UniqueConstraint("version_id", name=op.f("uq_ai_deployments_version_id")),
    )
    with op.batch_alter_table("ai_deployments", schema=None) as batch_op:
        batch_op.create_index("ix_ai_deployments_status", ["status"], unique=False)
        batch_op.create_index(
            "ix_ai_deployments_tenant_created", ["tenant_id", "created_at"], unique=False
        )

    op.create_table(
        "ai_outcome_counters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("version_id", sa.Uuid(), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("score_sum", sa.Float(), nullable=False),
        sa.Column("score_sq_sum", sa.Float(), nullable=False),
        sa.Column("score_count", sa.Integer(), nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False),
        sa.Column("latency_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_outcome_counters_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["ai_model_versions.id"],
            name=op.f("fk_ai_outcome_counters_version_id_ai_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_outcome_counters")),
    )
    with op.batch_alter_table("ai_outcome_counters", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ai_outcome_counters_tenant_bucket", ["tenant_id", "bucket_start"], unique=False
        )
        batch_op.create_index(
            "uq_ai_outcome_counters_version_bucket", ["version_id", "bucket_start"], unique=True
        )


def downgrade() -> None:

    with op.batch_alter_table("ai_outcome_counters", schema=None) as batch_op:
        batch_op.drop_index("uq_ai_outcome_counters_version_bucket")
        batch_op.drop_index("ix_ai_outcome_counters_tenant_bucket")

    op.drop_table("ai_outcome_counters")
    with op.batch_alter_table("ai_deployments", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_deployments_tenant_created")
        batch_op.drop_index("ix_ai_deployments_status")

    op.drop_table("ai_deployments")
    with op.batch_alter_table("ai_model_versions", schema=None) as batch_op:
        batch_op.drop_index("uq_ai_model_versions_tenant_version")
        batch_op.drop_index("ix_ai_model_versions_tenant_status")
        batch_op.drop_index(batch_op.f("ix_ai_model_versions_evaluation_id"))

    op.drop_table("ai_model_versions")
    with op.batch_alter_table("ai_finetuning_evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_finetuning_evaluations_run_id"))

    op.drop_table("ai_finetuning_evaluations")
    with op.batch_alter_table("ai_traffic_events", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_traffic_events_tenant_created")

    op.drop_table("ai_traffic_events")
    with op.batch_alter_table("ai_operations", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_operations_tenant_created")

    op.drop_table("ai_operations")
    with op.batch_alter_table("ai_finetuning_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_finetuning_runs_tenant_id"))

    op.drop_table("ai_finetuning_runs")
    op.drop_table("ai_deployment_policies")
    op.drop_table("tenants")
    with op.batch_alter_table("ai_webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_webhook_deliveries_openai_job_id"))

    op.drop_table("ai_webhook_deliveries")
    with op.batch_alter_table("ai_job_events", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_job_events_state_updated")

    op.drop_table("ai_job_events")
