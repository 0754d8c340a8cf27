"""Operator trust in the outcome doors: a refusal never raises into a request, a refused row never
costs other records or other tenants their outcomes, and counters are 64-bit."""

from __future__ import annotations

import logging
import traceback
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from registry.canary.outcomes import store_outcomes
from registry.canary.recorder import OutcomeRecorder
from registry.canary.resolver import VersionResolver
from registry.db import session_factory
from registry.errors import FtdeployError, TenantNotFound
from registry.models import OutcomeCounter
from tests.registry.test_outcomes import _live_tenant, _rows

EDGE_OF_TIME = "0001-01-01T00:00:00+14:00"  # astimezone(UTC) overflows
BIGINT_MAX = 2**63 - 1


def test_outcome_recording_never_raises_into_a_request(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    _, model_id = _live_tenant(sessions)
    fields: list[str] = []

    class Seen:
        def recorded(self, count: int) -> None:
            pass

        def refused(self, field: str) -> None:
            fields.append(field)

    recorder = OutcomeRecorder(sessions, bucket_seconds=60, background=False, observer=Seen())
    edge = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))
    caplog.set_level(logging.WARNING, "ftdeploy.outcomes")
    refused: list[tuple[Any, ...]] = [
        ("acme", "ft:unknown-model", True),  # unknown model
        ("acme", None, True),  # what resolve() returns with nothing live
        ("acmee", model_id, True),  # mistyped tenant
        ("Not A Slug", model_id, True),
        ("acme", model_id, "yes"),
        ("acme", [model_id], True),  # unhashable
    ]
    for args in refused:
        assert recorder.record(*args) is False
    assert recorder.record("acme", model_id, True, at=edge) is False
    assert recorder.record("acme", model_id, True, at=datetime(9999, 12, 31, tzinfo=UTC)) is False
    assert recorder.record("acme", model_id, True) is True
    stats = recorder.stats
    assert stats.refused == {"model": 3, "tenant": 2, "success": 1, "at": 2}
    assert sorted(fields) == sorted(["model"] * 3 + ["tenant"] * 2 + ["success"] + ["at"] * 2)
    assert any("out of range" in reason for reason in stats.recent_refusals)

    # A batch: the record at the edge of time is refused, those after it are still kept.
    good = {"tenant": "acme", "model": model_id, "success": True}
    result = recorder.record_many([good, {**good, "at": EDGE_OF_TIME}, good, {**good, "count": 2}])
    assert result.recorded == 4 and [(r.index, r.field) for r in result.refused] == [(1, "at")]

    # The database unreachable while resolving a new model: refused, counted, not raised.
    dead = OutcomeRecorder(
        session_factory("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1"),
        bucket_seconds=60,
        background=False,
    )
    assert dead.record("acme", model_id, True) is False
    assert dead.stats.refused == {"database": 1}

    # A flood of refusals is logged at a bounded rate.
    caplog.clear()
    for n in range(500):
        recorder.record("acme", f"ft:nope-{n}", True)
    assert 1 <= len(caplog.records) <= 10
    assert recorder.stats.refused["model"] == 503
    recorder.close()
    assert sum(r.requests for r in _rows(sessions)) == 5


def test_resolver_miss_cache_keeps_no_exception_objects(sessions: sessionmaker[Session]) -> None:
    _live_tenant(sessions)
    resolver = VersionResolver()
    with sessions() as session, pytest.raises(TenantNotFound):
        resolver.load(session, "ghost", "v1")
    raised: list[BaseException] = []
    for _ in range(50):
        try:
            resolver.cached("ghost", "v1")
        except FtdeployError as error:
            raised.append(error)
    assert len(raised) == 50 and isinstance(raised[0], TenantNotFound)
    assert len({id(e) for e in raised}) == 50  # a fresh refusal each time
    depths = {len(traceback.extract_tb(e.__traceback__)) for e in raised}
    assert len(depths) == 1, depths  # no traceback grows with each re-raise
    assert not any(
        isinstance(part, BaseException) for entry in resolver._misses.values() for part in entry
    )


def test_failed_flush_logs_why(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    _, model_id = _live_tenant(sessions)
    recorder = OutcomeRecorder(sessions, bucket_seconds=60, background=False, max_pending=1)
    with sessions() as session, session.begin():
        session.execute(text("ALTER TABLE ai_outcome_counters RENAME TO parked_counters"))
    caplog.set_level(logging.WARNING, "ftdeploy.outcomes")
    # max_pending=1: record() flushes inline; the failure is logged, not raised into it.
    assert recorder.record("acme", model_id, True) is True
    [line] = [r for r in caplog.records if r.getMessage() == "outcomes.flush_failed"]
    fields = line.ftdeploy_fields  # type: ignore[attr-defined]
    assert "ai_outcome_counters" in fields["reason"] and fields["pending"] == 1
    with sessions() as session, session.begin():
        session.execute(text("ALTER TABLE parked_counters RENAME TO ai_outcome_counters"))
    recorder.close()
    assert [r.requests for r in _rows(sessions)] == [1]


def _set_requests(sessions: sessionmaker[Session], tenant_id: uuid.UUID, value: int) -> None:
    with sessions() as session, session.begin():
        session.execute(
            update(OutcomeCounter)
            .where(OutcomeCounter.tenant_id == tenant_id)
            .values(requests=value)
        )


def test_outcomes_never_lost_one_tenant_never_blocks_another(pg_url: str) -> None:
    sessions = session_factory(pg_url)
    acme_id, acme_model = _live_tenant(sessions, "acme")
    _, globex_model = _live_tenant(sessions, "globex")
    recorder = OutcomeRecorder(sessions, bucket_seconds=3600, background=False)
    # 3 billion outcomes in one bucket: past a 32-bit counter.
    for _ in range(3000):
        assert recorder.record("acme", acme_model, True, count=1_000_000)
    recorder.record("globex", globex_model, True, count=5)
    assert recorder.flush() == 2
    totals = {row.tenant_id: row.requests for row in _rows(sessions)}
    assert totals[acme_id] == 3_000_000_000

    # A bucket of acme's that the database cannot add to any more: acme's row is dropped with its
    # reason, globex's lands in the same flush.
    _set_requests(sessions, acme_id, BIGINT_MAX - 10)
    recorder.record("acme", acme_model, True, count=1000)
    recorder.record("globex", globex_model, False, count=7)
    assert recorder.flush() == 1
    stats = recorder.stats
    assert stats.rows_dropped == 1 and stats.pending == 0
    assert "overflow" in stats.recent_refusals[-1] and stats.refused["count"] == 1
    totals = {row.tenant_id: row.requests for row in _rows(sessions)}
    assert totals[acme_id] == BIGINT_MAX - 10 and sum(totals.values()) == BIGINT_MAX - 10 + 12
    # Nothing is left to fail the next flushes.
    recorder.record("globex", globex_model, True)
    assert recorder.flush() == 1
    recorder.close()


def test_record_outcomes_batch_refuses_only_the_overflowing_record(pg_url: str) -> None:
    sessions = session_factory(pg_url)
    acme_id, acme_model = _live_tenant(sessions, "acme")
    _, globex_model = _live_tenant(sessions, "globex")
    with sessions() as session, session.begin():
        store_outcomes(
            session, [{"tenant": "acme", "model": acme_model, "success": True}], bucket_seconds=3600
        )
    _set_requests(sessions, acme_id, BIGINT_MAX - 10)
    batch = [
        {"tenant": "globex", "model": globex_model, "success": True, "count": 2},
        {"tenant": "acme", "model": acme_model, "success": True, "count": 1_000_000},
        {"tenant": "globex", "model": globex_model, "success": False, "count": 3},
    ]
    with sessions() as session, session.begin():
        result = store_outcomes(session, batch, bucket_seconds=3600)
    assert result.recorded == 5
    assert [(r.index, r.field) for r in result.refused] == [(1, "count")]
    assert "overflow" in result.refused[0].reason
    totals = sorted(row.requests for row in _rows(sessions))
    assert totals == [5, BIGINT_MAX - 10]
