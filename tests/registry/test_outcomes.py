"""Outcomes: validation, bucketing, the batched upsert, and the in-process recorder, on both
databases (the recorder's flushes go to the real database; nothing is mocked)."""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from registry.canary.counters import Sums, bucket_start
from registry.canary.outcome_input import Outcome, check_batch, parse_outcome, validate_outcome
from registry.canary.outcomes import store_outcomes
from registry.canary.recorder import OutcomeRecorder
from registry.canary.resolver import VersionResolver
from registry.errors import InvalidInput, TenantNotFound
from registry.models import OutcomeCounter
from tests.factories import deploy_new, make_tenant
from tests.harness import wait_for

NOW = datetime(2025, 6, 2, 12, 0, 3, tzinfo=UTC)
GOOD: dict[str, Any] = {"tenant": "acme", "model": "ft:gpt-4o-mini:acme::x1", "success": True}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tenant": "Not A Slug"}, "tenant"),
        ({"tenant": 7}, "tenant"),
        ({"model": ""}, "model"),
        ({"model": "has space"}, "model"),
        ({"model": 0}, "model"),
        ({"model": True}, "model"),
        ({"model": "x" * 401}, "model"),
        ({"success": 1}, "success"),
        ({"success": "yes"}, "success"),
        ({"score": 1.5}, "score"),
        ({"score": -0.1}, "score"),
        ({"score": float("nan")}, "score"),
        ({"score": True}, "score"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": float("inf")}, "latency_ms"),
        ({"count": 0}, "count"),
        ({"count": 2.0}, "count"),
        ({"count": 1_000_001}, "count"),
        ({"at": "yesterday"}, "at"),
        ({"at": "2025-06-02T12:00:00"}, "at"),  # no time zone
        ({"at": (NOW + timedelta(minutes=5)).isoformat()}, "at"),  # in the future
        ({"sucess": True}, "record"),  # a typo is not an optional field left out
    ],
)
def test_invalid_records_are_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_outcome({**GOOD, **changes}, now=NOW)
    assert refused.value.field == field


@pytest.mark.parametrize("missing", ["tenant", "model", "success"])
def test_required_fields(missing: str) -> None:
    record = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(InvalidInput, match="missing") as refused:
        parse_outcome(record, now=NOW)
    assert refused.value.field == missing


def test_valid_records_are_normalized() -> None:
    outcome = parse_outcome(
        {
            **GOOD,
            "model": " v3 ",
            "score": 1,
            "latency_ms": 0,
            "count": 4,
            "at": "2025-06-02T13:00:00+01:00",
        },
        now=NOW,
    )
    assert outcome.model == 3 and outcome.score == 1.0 and outcome.count == 4
    assert outcome.at == datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
    assert validate_outcome("acme", 2, False).model == 2
    assert validate_outcome(str(uuid.UUID(int=1)), "ft:x", True).tenant == str(uuid.UUID(int=1))
    with pytest.raises(InvalidInput):
        check_batch({"not": "a list"})
    with pytest.raises(InvalidInput):
        check_batch([GOOD] * 10_001)


def test_buckets_are_aligned_and_exact() -> None:
    assert bucket_start(NOW, 10) == datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
    assert bucket_start(NOW - timedelta(microseconds=3_000_001), 10) == datetime(
        2025, 6, 2, 11, 59, 50, tzinfo=UTC
    )
    assert bucket_start(NOW, 1) == NOW


outcomes_strategy = st.lists(
    st.builds(
        Outcome,
        tenant=st.just("acme"),
        model=st.just(1),
        success=st.booleans(),
        score=st.none() | st.floats(0, 1),
        latency_ms=st.none() | st.floats(0, 10_000),
        count=st.integers(1, 50),
    ),
    max_size=40,
)


@given(outcomes_strategy, st.integers(0, 40))
def test_sums_split_anywhere_and_merged_equal_one_sum(outcomes: list[Outcome], cut: int) -> None:
    whole, first, second = Sums(), Sums(), Sums()
    for index, outcome in enumerate(outcomes):
        whole.add(outcome)
        (first if index < cut else second).add(outcome)
    first.merge(second)
    for name, value in whole.as_dict().items():
        assert first.as_dict()[name] == pytest.approx(value)
    assert whole.requests == sum(o.count for o in outcomes)
    assert whole.successes == sum(o.count for o in outcomes if o.success)
    assert whole.score_count == sum(o.count for o in outcomes if o.score is not None)


def _live_tenant(sessions: sessionmaker[Session], slug: str = "acme") -> tuple[uuid.UUID, str]:
    """A tenant with v1 serving; returns its id and v1's model id."""
    with sessions() as session, session.begin():
        tenant = make_tenant(session, slug)
        deploy_new(session, tenant)
        from registry.versions import list_versions

        return tenant.id, list_versions(session, tenant.id)[0].model_id


def _rows(sessions: sessionmaker[Session]) -> list[OutcomeCounter]:
    with sessions() as session:
        return list(session.scalars(select(OutcomeCounter).order_by(OutcomeCounter.bucket_start)))


def test_store_sums_per_version_and_bucket_and_adds_on_conflict(
    sessions: sessionmaker[Session],
) -> None:
    _, model_id = _live_tenant(sessions)
    batch = [
        {"tenant": "acme", "model": model_id, "success": True, "score": 0.5, "latency_ms": 100},
        {"tenant": "acme", "model": "v1", "success": False, "count": 3, "at": NOW.isoformat()},
        {"tenant": "acme", "model": 1, "success": True, "score": 1.0, "at": NOW.isoformat()},
        {"tenant": "acme", "model": "ft:unknown", "success": True},
        {"tenant": "nobody", "model": 1, "success": True},
        {"tenant": "acme", "model": 1, "success": "maybe"},
    ]
    for _ in range(2):  # the second batch lands on the same rows: ON CONFLICT adds
        with sessions() as session, session.begin():
            result = store_outcomes(
                session, batch, bucket_seconds=10, now=NOW + timedelta(seconds=30)
            )
        assert result.recorded == 5
        assert [(r.index, r.field) for r in result.refused] == [
            (3, "model"),
            (4, "tenant"),
            (5, "success"),
        ]
        assert "tenant 'acme' has no version 'ft:unknown'" in result.refused[0].reason
    at_now, later = _rows(sessions)
    assert (at_now.bucket_start, at_now.requests, at_now.successes) == (
        datetime(2025, 6, 2, 12, 0, tzinfo=UTC),
        8,
        2,
    )
    assert (at_now.score_count, at_now.score_sum, at_now.score_sq_sum) == (2, 2.0, 2.0)
    assert (later.requests, later.successes, later.score_sum, later.score_sq_sum) == (
        2,
        2,
        1.0,
        0.5,
    )
    assert (later.latency_count, later.latency_ms_sum) == (2, 200.0)


def test_a_model_id_is_resolved_only_within_its_tenant(sessions: sessionmaker[Session]) -> None:
    _, acme_model = _live_tenant(sessions, "acme")
    _live_tenant(sessions, "other")
    with sessions() as session, pytest.raises(InvalidInput, match="has no version"):
        VersionResolver().resolve(session, "other", acme_model)
    with sessions() as session, pytest.raises(TenantNotFound):
        VersionResolver().resolve(session, "ghost", acme_model)


def test_recorder_aggregates_and_flushes_on_request(sessions: sessionmaker[Session]) -> None:
    _, model_id = _live_tenant(sessions)
    seen: list[tuple[str, Any]] = []

    class Observer:
        def recorded(self, count: int) -> None:
            seen.append(("recorded", count))

        def refused(self, field: str) -> None:
            seen.append(("refused", field))

    recorder = OutcomeRecorder(sessions, bucket_seconds=3600, background=False, observer=Observer())
    for n in range(100):
        recorder.record("acme", model_id, n % 10 != 0, score=0.8, latency_ms=50)
    recorder.record("acme", "v1", True, count=20)
    # Refusals are counted, never raised into the caller's request.
    assert recorder.record("acme", "v9", True) is False
    assert recorder.record("acme", "v1", True, score=3) is False  # a known model: values count
    assert recorder.record("acme", model_id, True, latency_ms=float("nan")) is False
    assert _rows(sessions) == []  # nothing written before a flush
    assert recorder.flush() == 1  # 121 outcomes, one bucket: one row
    [row] = _rows(sessions)
    assert (row.requests, row.successes, row.score_count, row.latency_count) == (120, 110, 100, 100)
    assert row.score_sum == pytest.approx(80.0)
    stats = recorder.stats
    assert (stats.recorded, stats.refused, stats.rows_written) == (
        120,
        {"model": 1, "score": 1, "latency_ms": 1},
        1,
    )
    assert seen.count(("refused", "model")) == 1 and ("recorded", 20) in seen
    result = recorder.record_many([{**GOOD, "model": 1}, {"tenant": "acme"}])
    assert result.recorded == 1 and [r.field for r in result.refused] == ["model"]
    recorder.close()
    assert _rows(sessions)[0].requests == 121


def test_recorder_flushes_on_size_and_in_the_background(sessions: sessionmaker[Session]) -> None:
    _, model_id = _live_tenant(sessions)
    inline = OutcomeRecorder(sessions, bucket_seconds=3600, background=False, max_pending=10)
    for _ in range(25):
        inline.record("acme", model_id, True)
    assert inline.stats.flushes == 2 and sum(r.requests for r in _rows(sessions)) == 20
    inline.close()
    with OutcomeRecorder(sessions, bucket_seconds=3600, flush_seconds=0.05) as background:
        background.record("acme", model_id, False)
        wait_for(lambda: sum(r.requests for r in _rows(sessions)) == 26, 10, "no background flush")


def test_concurrent_recording_loses_nothing(sessions: sessionmaker[Session]) -> None:
    _, model_id = _live_tenant(sessions)
    recorder = OutcomeRecorder(sessions, bucket_seconds=1, flush_seconds=0.01, max_pending=50)
    threads, per_thread = 8, 400

    def hammer(index: int) -> None:
        for n in range(per_thread):
            recorder.record("acme", model_id, (n + index) % 4 != 0, score=0.25)

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    recorder.close()
    rows = _rows(sessions)
    assert sum(r.requests for r in rows) == threads * per_thread
    assert sum(r.successes for r in rows) == threads * per_thread * 3 // 4
    assert sum(r.score_sum for r in rows) == pytest.approx(threads * per_thread * 0.25)
    assert recorder.stats.pending == 0


def test_a_failed_flush_keeps_its_counts_for_the_next(sessions: sessionmaker[Session]) -> None:
    _, model_id = _live_tenant(sessions)
    recorder = OutcomeRecorder(sessions, bucket_seconds=3600, background=False)
    recorder.record("acme", model_id, True, count=7)
    with sessions() as session, session.begin():
        session.execute(text("ALTER TABLE ai_outcome_counters RENAME TO parked_counters"))
    with pytest.raises(Exception, match="ai_outcome_counters"):
        recorder.flush()
    recorder.record("acme", model_id, False, count=2)
    assert recorder.stats.pending == 1
    with sessions() as session, session.begin():
        session.execute(text("ALTER TABLE parked_counters RENAME TO ai_outcome_counters"))
    recorder.close()
    [row] = _rows(sessions)
    assert (row.requests, row.successes) == (9, 7)


def test_a_row_whose_version_vanished_is_dropped_and_the_rest_written(
    sessions: sessionmaker[Session],
) -> None:
    tenant_id, model_id = _live_tenant(sessions)

    class Stale(VersionResolver):
        """Answers "ghost" with ids that no longer exist, as a cache would after a deletion."""

        def cached(self, tenant: str, model: str | int) -> tuple[uuid.UUID, uuid.UUID] | None:
            if model == "ghost":
                return tenant_id, uuid.uuid4()
            return super().cached(tenant, model)

    recorder = OutcomeRecorder(sessions, bucket_seconds=3600, background=False, resolver=Stale())
    recorder.record("acme", "ghost", True)
    recorder.record("acme", model_id, True, count=3)
    assert recorder.flush() == 1
    assert [r.requests for r in _rows(sessions)] == [3]


def test_a_forked_child_does_not_flush_its_parents_counts(sessions: sessionmaker[Session]) -> None:
    _, model_id = _live_tenant(sessions)
    recorder = OutcomeRecorder(sessions, bucket_seconds=3600, background=False)
    recorder.record("acme", model_id, True, count=5)
    pid = os.fork()
    if pid == 0:  # the child: nothing pending, nothing written
        os._exit(0 if recorder.stats.pending == 0 and recorder.flush() == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    recorder.close()
    assert [r.requests for r in _rows(sessions)] == [5]
