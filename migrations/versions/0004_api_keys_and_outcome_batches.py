"""API keys (hashes only) and their tenant scopes, processed outcome batches, operation reasons.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("all_tenants", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "role IN ('serve', 'read', 'operate', 'admin')", name=op.f("ck_api_keys_role")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_id", name=op.f("uq_api_keys_key_id")),
        sa.UniqueConstraint("name", name=op.f("uq_api_keys_name")),
    )
    op.create_table(
        "api_key_tenants",
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["api_keys.id"],
            name=op.f("fk_api_key_tenants_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_key_tenants_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key_id", "tenant_id", name=op.f("pk_api_key_tenants")),
    )
    with op.batch_alter_table("api_key_tenants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_api_key_tenants_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "ai_outcome_batches",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("batch_id", sa.String(length=200), nullable=False),
        sa.Column("recorded", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_ai_outcome_batches_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_outcome_batches")),
    )
    with op.batch_alter_table("ai_outcome_batches", schema=None) as batch_op:
        batch_op.create_index(
            "uq_ai_outcome_batches_tenant_batch", ["tenant_id", "batch_id"], unique=True
        )

    with op.batch_alter_table("ai_operations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ai_operations", schema=None) as batch_op:
        batch_op.drop_column("reason")

    with op.batch_alter_table("ai_outcome_batches", schema=None) as batch_op:
        batch_op.drop_index("uq_ai_outcome_batches_tenant_batch")
    op.drop_table("ai_outcome_batches")

    with op.batch_alter_table("api_key_tenants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_key_tenants_tenant_id"))
    op.drop_table("api_key_tenants")
    op.drop_table("api_keys")
