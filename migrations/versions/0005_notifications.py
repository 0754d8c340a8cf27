"""Notifications: endpoints, the outbox, deliveries and their attempts, per-tenant sequences.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:57:41.303894
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As registry.models.JSONType and registry.models.BigInt (not imported from there).
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ai_notification_streams",
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stream", name=op.f("pk_ai_notification_streams")),
    )
    op.create_table(
        "ai_notification_endpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("url_hint", sa.Text(), nullable=False),
        sa.Column("url_encrypted", sa.Text(), nullable=False),
        sa.Column("secret_encrypted", sa.Text(), nullable=True),
        sa.Column("event_types", JSON_TYPE, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "format IN ('webhook', 'slack')", name=op.f("ck_ai_notification_endpoints_format")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_notification_endpoints_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_notification_endpoints")),
        sa.UniqueConstraint("name", name=op.f("uq_ai_notification_endpoints_name")),
    )
    with op.batch_alter_table("ai_notification_endpoints", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_notification_endpoints_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "ai_notification_outbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("data", JSON_TYPE, nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_notification_outbox_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_notification_outbox")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_ai_notification_outbox_dedupe_key")),
    )
    with op.batch_alter_table("ai_notification_outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ai_notification_outbox_tenant_created", ["tenant_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "uq_ai_notification_outbox_stream_seq", ["stream", "seq"], unique=True
        )

    op.create_table(
        "ai_notification_deliveries",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')",
            name=op.f("ck_ai_notification_deliveries_status"),
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["ai_notification_endpoints.id"],
            name=op.f("fk_ai_notification_deliveries_endpoint_id_ai_notification_endpoints"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["ai_notification_outbox.id"],
            name=op.f("fk_ai_notification_deliveries_event_id_ai_notification_outbox"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_notification_deliveries")),
    )
    with op.batch_alter_table("ai_notification_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ai_notification_deliveries_due", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index(
            "ix_ai_notification_deliveries_queue",
            ["endpoint_id", "status", "stream", "seq"],
            unique=False,
        )
        batch_op.create_index(
            "uq_ai_notification_deliveries_event_endpoint", ["event_id", "endpoint_id"], unique=True
        )

    op.create_table(
        "ai_notification_attempts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("delivery_id", BIG_ID, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["ai_notification_deliveries.id"],
            name=op.f("fk_ai_notification_attempts_delivery_id_ai_notification_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_notification_attempts")),
    )
    with op.batch_alter_table("ai_notification_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_notification_attempts_delivery_id"), ["delivery_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ai_notification_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_notification_attempts_delivery_id"))

    op.drop_table("ai_notification_attempts")
    with op.batch_alter_table("ai_notification_deliveries", schema=None) as batch_op:
        batch_op.drop_index("uq_ai_notification_deliveries_event_endpoint")
        batch_op.drop_index("ix_ai_notification_deliveries_queue")
        batch_op.drop_index("ix_ai_notification_deliveries_due")

    op.drop_table("ai_notification_deliveries")
    with op.batch_alter_table("ai_notification_outbox", schema=None) as batch_op:
        batch_op.drop_index("uq_ai_notification_outbox_stream_seq")
        batch_op.drop_index("ix_ai_notification_outbox_tenant_created")

    op.drop_table("ai_notification_outbox")
    with op.batch_alter_table("ai_notification_endpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_notification_endpoints_tenant_id"))

    op.drop_table("ai_notification_endpoints")
    op.drop_table("ai_notification_streams")
