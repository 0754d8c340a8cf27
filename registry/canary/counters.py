"""Outcome counters in memory and their upsert: the one bucketing rule, the running sums of one
(version, bucket), and the statement that adds them to `ai_outcome_counters`.

No outcome gets a row of its own: outcomes are summed per (version, bucket) and written with one
`INSERT … ON CONFLICT (version_id, bucket_start) DO UPDATE` (adding the sums) per chunk of
buckets. Writing them so that one refused row does not block the others is
`registry.canary.counter_writes`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table
from sqlalchemy.orm import Session

from registry import dialect
from registry.models import OutcomeCounter

if TYPE_CHECKING:
    from registry.canary.outcome_input import Outcome

# Buckets per INSERT: 10 parameters each stays far below PostgreSQL's and SQLite's limits.
UPSERT_CHUNK = 500
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SUM_COLUMNS = (
    "requests",
    "successes",
    "score_sum",
    "score_sq_sum",
    "score_count",
    "latency_ms_sum",
    "latency_count",
)

Key = tuple[uuid.UUID, uuid.UUID, datetime]  # tenant id, version id, bucket start
Ids = tuple[uuid.UUID, uuid.UUID]  # tenant id, version id


def bucket_of(epoch_seconds: float, width: int) -> int:
    """The start, in whole seconds since the epoch, of the `width`-second bucket holding the
    moment. The one bucketing rule: counters, the recorder's fast path and the analysis window
    all align on it."""
    return int(epoch_seconds // width) * width


def bucket_time(bucket: int) -> datetime:
    """A bucket start (`bucket_of`) as a UTC time, the counters' `bucket_start`."""
    return EPOCH + timedelta(seconds=bucket)


def bucket_start(at: datetime, width: int) -> datetime:
    """The start of the `width`-second bucket holding `at`, as a UTC time."""
    # Whole seconds first (floor), in integers: exact, and the same bucket as `bucket_of`'s.
    return bucket_time(bucket_of((at - EPOCH) // timedelta(seconds=1), width))


class Sums:
    """Running sums of one (version, bucket). Mutable; guarded by its owner's lock."""

    __slots__ = SUM_COLUMNS

    def __init__(self) -> None:
        self.requests = self.successes = self.score_count = self.latency_count = 0
        self.score_sum = self.score_sq_sum = self.latency_ms_sum = 0.0

    def add(self, outcome: Outcome) -> None:
        self.add_values(outcome.count, outcome.success, outcome.score, outcome.latency_ms)

    def add_values(
        self, n: int, success: bool, score: float | None, latency_ms: float | None
    ) -> None:
        self.requests += n
        if success:
            self.successes += n
        if score is not None:
            self.score_count += n
            self.score_sum += n * score
            self.score_sq_sum += n * score * score
        if latency_ms is not None:
            self.latency_count += n
            self.latency_ms_sum += n * latency_ms

    def merge(self, other: Sums) -> None:
        for name in SUM_COLUMNS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int | float]:
        return {name: getattr(self, name) for name in SUM_COLUMNS}


def upsert_counters(session: Session, sums: Mapping[Key, Sums]) -> int:
    """Add `sums` to the counters: one INSERT … ON CONFLICT DO UPDATE per UPSERT_CHUNK buckets.

    Rows are written in (version, bucket) order, so concurrent writers lock them in the same order
    and cannot deadlock each other on PostgreSQL. Flushes only; the caller commits. Returns the
    number of statements executed.
    """
    table = cast(Table, OutcomeCounter.__table__)
    ordered = sorted(sums.items(), key=lambda item: (item[0][1], item[0][2]))
    statements = 0
    for start in range(0, len(ordered), UPSERT_CHUNK):
        chunk = ordered[start : start + UPSERT_CHUNK]
        rows = [
            {"tenant_id": t, "version_id": v, "bucket_start": b, **s.as_dict()}
            for (t, v, b), s in chunk
        ]
        stmt = dialect.insert(session, table).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=["version_id", "bucket_start"],
            set_={name: table.c[name] + stmt.excluded[name] for name in SUM_COLUMNS},
        )
        session.execute(stmt)
        statements += 1
    return statements
