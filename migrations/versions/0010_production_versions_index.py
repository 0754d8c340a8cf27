"""An index of each tenant's production versions, in version order: every change reads them
under the tenant's lock, and the (tenant_id, status) index alone left PostgreSQL's cached plans
walking the tenant's whole history, a cost that grew with every version registered.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRODUCTION_ONLY = sa.text("status = 'production'")


def upgrade() -> None:
    with op.batch_alter_table("ai_model_versions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ai_model_versions_tenant_production",
            ["tenant_id", "version"],
            unique=False,
            postgresql_where=PRODUCTION_ONLY,
            sqlite_where=PRODUCTION_ONLY,
        )


def downgrade() -> None:
    with op.batch_alter_table("ai_model_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_model_versions_tenant_production")
