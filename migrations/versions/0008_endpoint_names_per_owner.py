"""Notification endpoint names unique per owner: per tenant, and separately among the global
endpoints (tenant NULL), instead of across every tenant (a taken name told a tenant what another
one calls its endpoints).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-20 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "ai_notification_endpoints"
GLOBAL_ONLY = sa.text("tenant_id IS NULL")


def upgrade() -> None:
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        batch_op.drop_constraint(op.f("uq_ai_notification_endpoints_name"), type_="unique")
        batch_op.create_index(
            "uq_ai_notification_endpoints_tenant_name", ["tenant_id", "name"], unique=True
        )
        # NULL tenants are distinct in the index above: the global endpoints get their own.
        batch_op.create_index(
            "uq_ai_notification_endpoints_global_name",
            ["name"],
            unique=True,
            postgresql_where=GLOBAL_ONLY,
            sqlite_where=GLOBAL_ONLY,
        )


def downgrade() -> None:
    # The older schema holds a name once across all tenants: two owners of one name cannot both
    # stay, and which to drop is not for a migration to decide.
    shared = (
        op.get_bind()
        .execute(
            sa.text(
                f"SELECT name, COUNT(*) FROM {TABLE} GROUP BY name HAVING COUNT(*) > 1 "
                "ORDER BY name"
            )
        )
        .all()
    )
    if shared:
        held = ", ".join(f"{name!r} ({count} endpoints)" for name, count in shared)
        raise RuntimeError(
            f"cannot downgrade below 0008: notification endpoint names used by more than one "
            f"owner (tenant, or global): {held}; remove or rename all but one of each "
            "(ftdeploy notify remove NAME --tenant SLUG, or add it again under another name), "
            "then downgrade again"
        )
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        batch_op.drop_index("uq_ai_notification_endpoints_global_name")
        batch_op.drop_index("uq_ai_notification_endpoints_tenant_name")
        batch_op.create_unique_constraint(op.f("uq_ai_notification_endpoints_name"), ["name"])
