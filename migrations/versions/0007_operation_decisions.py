"""Operations decided against the split they were queued on: the split and the newest traffic
event at queueing, `force`, a time to live (`expires_at`), `enqueued_at` for the reconciler, and
the final statuses `stale`, `expired` and `cancelled`.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-16 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on PostgreSQL, JSON text elsewhere (as registry.models.JSONType; not imported from there).
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not taken from registry.models.OperationStatus: a migration stands alone.
STATUSES_BEFORE = "status IN ('queued', 'running', 'succeeded', 'failed')"
STATUSES_AFTER = (
    "status IN ('queued', 'running', 'succeeded', 'failed', 'stale', 'expired', 'cancelled')"
)


def upgrade() -> None:
    with op.batch_alter_table("ai_operations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queued_split", JSON_TYPE, nullable=True))
        batch_op.add_column(sa.Column("queued_after_event", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("force", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint(op.f("ck_ai_operations_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_ai_operations_status"), STATUSES_AFTER)
    # Rows queued before this revision were handed to the broker by then (or never will be):
    # they are not re-sent by the reconciler, which only looks at rows with enqueued_at NULL
    # and a time to live.
    op.execute("UPDATE ai_operations SET enqueued_at = created_at")


def downgrade() -> None:
    # The older schema knows none of the new final statuses: they read as failed there.
    op.execute(
        "UPDATE ai_operations SET status = 'failed' "
        "WHERE status IN ('stale', 'expired', 'cancelled')"
    )
    with op.batch_alter_table("ai_operations", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_ai_operations_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_ai_operations_status"), STATUSES_BEFORE)
        batch_op.drop_column("enqueued_at")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("force")
        batch_op.drop_column("queued_after_event")
        batch_op.drop_column("queued_split")
