"""An evaluation's resume of its run's deployment, kept so that none is lost: when it was
requested, handed to the broker, and ended (with its outcome). A CHECK keeps the order.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SENT = "resume_sent_at IS NULL OR resume_requested_at IS NOT NULL"
ENDED = (
    "resume_ended_at IS NULL OR (resume_requested_at IS NOT NULL AND resume_outcome IS NOT NULL)"
)


def upgrade() -> None:
    # Evaluations recorded before this revision keep NULLs: whether they asked for a resume is
    # not known, and the reconciler only looks at requested ones.
    with op.batch_alter_table("ai_finetuning_evaluations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("resume_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("resume_sent_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("resume_ended_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("resume_outcome", sa.String(length=2000), nullable=True))
        batch_op.create_check_constraint(op.f("ck_ai_finetuning_evaluations_resume_sent"), SENT)
        batch_op.create_check_constraint(op.f("ck_ai_finetuning_evaluations_resume_ended"), ENDED)


def downgrade() -> None:
    with op.batch_alter_table("ai_finetuning_evaluations", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_ai_finetuning_evaluations_resume_ended"), type_="check")
        batch_op.drop_constraint(op.f("ck_ai_finetuning_evaluations_resume_sent"), type_="check")
        batch_op.drop_column("resume_outcome")
        batch_op.drop_column("resume_ended_at")
        batch_op.drop_column("resume_sent_at")
        batch_op.drop_column("resume_requested_at")
