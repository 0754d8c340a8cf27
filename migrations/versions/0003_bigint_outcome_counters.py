"""Outcome counters are 64-bit: a 32-bit bucket overflowed on one tenant's large counts, and
every flush then failed for every tenant.

PostgreSQL only: SQLite's INTEGER is already 64-bit (the models declare BIGINT with an INTEGER
variant there, so the schemas agree without rebuilding the table). The downgrade fails if a
counter already holds more than a 32-bit integer can.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "ai_outcome_counters"
COLUMNS = ("requests", "successes", "score_count", "latency_count")


def _alter(new: sa.types.TypeEngine[int], old: sa.types.TypeEngine[int]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for column in COLUMNS:
        op.alter_column(TABLE, column, type_=new, existing_type=old, existing_nullable=False)


def upgrade() -> None:
    _alter(sa.BigInteger(), sa.Integer())


def downgrade() -> None:
    _alter(sa.Integer(), sa.BigInteger())
