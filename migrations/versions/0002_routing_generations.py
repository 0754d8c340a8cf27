"""Routing change feed: one generation row per tenant, bumped with every change of its traffic.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ai_routing_generations",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_routing_generations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_ai_routing_generations")),
    )
    with op.batch_alter_table("ai_routing_generations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_routing_generations_generation"), ["generation"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ai_routing_generations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_routing_generations_generation"))
    op.drop_table("ai_routing_generations")
