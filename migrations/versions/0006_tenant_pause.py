"""Tenant pause (policy `paused`, `paused_reason`) and the audit trail of non-traffic changes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on PostgreSQL, JSON text elsewhere (as registry.models.JSONType; not imported from there).
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ai_deployment_policies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("paused_reason", sa.Text(), nullable=True))

    op.create_table(
        "ai_audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("changes", JSON_TYPE, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_audit_events_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_audit_events")),
    )
    with op.batch_alter_table("ai_audit_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ai_audit_events_tenant_created", ["tenant_id", "created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_ai_audit_events_subject"), ["subject"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ai_audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_audit_events_subject"))
        batch_op.drop_index("ix_ai_audit_events_tenant_created")
    op.drop_table("ai_audit_events")

    with op.batch_alter_table("ai_deployment_policies", schema=None) as batch_op:
        batch_op.drop_column("paused_reason")
        batch_op.drop_column("paused")
