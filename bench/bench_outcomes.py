"""Recording online outcomes: the batching `OutcomeRecorder` against one INSERT per outcome.

Both write to the same PostgreSQL database, for the same 20 live versions (10 tenants, v1 and v2
each), one outcome at a time from one thread, as a serving app's request handler would:

- baseline: each outcome is its own `INSERT … ON CONFLICT DO UPDATE` (the same upsert, adding to
  the version's counter row), on an open autocommit connection with a prepared statement: the
  cheapest way to write one row per request;
- ours: `OutcomeRecorder.record()`, which aggregates in memory and flushes every second (and on
  close) with one upsert per batch of buckets. The clock stops after `close()` has flushed
  everything, so the rate counts the writes too.

Both runs are checked to have stored every outcome. Also reported: SQL statements per 10,000
outcomes (counted with a `before_cursor_execute` listener) and the p50 cost of one call.

Run alone: `python -m bench.bench_outcomes [--quick]` (starts its own PostgreSQL and Redis).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime

import psycopg
from sqlalchemy import func, select

from bench.common import BenchEnv, Row, fresh_database, run_alone
from registry.canary.counters import bucket_start
from registry.canary.recorder import OutcomeRecorder
from registry.db import session_factory
from registry.models import OutcomeCounter
from registry.versions import list_versions
from tests.factories import deploy_new, make_tenant
from tests.services import libpq_url
from tests.statements import recorded_statements

TENANTS = 10
BUCKET_SECONDS = 10
ONE_UPSERT = """
INSERT INTO ai_outcome_counters (tenant_id, version_id, bucket_start, requests, successes,
    score_sum, score_sq_sum, score_count, latency_ms_sum, latency_count)
VALUES (%s, %s, %s, 1, %s, %s, %s, 1, %s, 1)
ON CONFLICT (version_id, bucket_start) DO UPDATE SET
    requests = ai_outcome_counters.requests + excluded.requests,
    successes = ai_outcome_counters.successes + excluded.successes,
    score_sum = ai_outcome_counters.score_sum + excluded.score_sum,
    score_sq_sum = ai_outcome_counters.score_sq_sum + excluded.score_sq_sum,
    score_count = ai_outcome_counters.score_count + excluded.score_count,
    latency_ms_sum = ai_outcome_counters.latency_ms_sum + excluded.latency_ms_sum,
    latency_count = ai_outcome_counters.latency_count + excluded.latency_count
"""

Target = tuple[str, str, uuid.UUID, uuid.UUID]  # slug, model id, tenant id, version id


def _setup(url: str) -> list[Target]:
    sessions = session_factory(url)
    targets = []
    with sessions() as session, session.begin():
        for n in range(TENANTS):
            tenant = make_tenant(session, f"bench-{n}", strategy="canary")
            deploy_new(session, tenant)
            deploy_new(session, tenant)
            for version in list_versions(session, tenant.id):
                targets.append((tenant.slug, version.model_id, tenant.id, version.id))
    return targets


def _requests(targets: list[Target], n: int, seed: int) -> list[tuple[Target, bool, float, float]]:
    rng = random.Random(seed)
    return [
        (rng.choice(targets), rng.random() < 0.97, rng.random(), rng.uniform(50, 900))
        for _ in range(n)
    ]


def _total(url: str) -> int:
    with session_factory(url)() as session:
        return int(session.scalar(select(func.coalesce(func.sum(OutcomeCounter.requests), 0))))


def _one_insert_each(url: str, requests: list[tuple[Target, bool, float, float]]) -> float:
    """Outcomes per second, one autocommitted upsert each; also per-call times (returned)."""
    with psycopg.connect(libpq_url(url), autocommit=True, prepare_threshold=0) as connection:
        started = time.perf_counter()
        for (_, _, tenant_id, version_id), ok, score, latency in requests:
            connection.execute(
                ONE_UPSERT,
                (
                    tenant_id,
                    version_id,
                    bucket_start(datetime.now(UTC), BUCKET_SECONDS),
                    int(ok),
                    score,
                    score * score,
                    latency,
                ),
            )
        return len(requests) / (time.perf_counter() - started)


def _recorder(
    url: str, requests: list[tuple[Target, bool, float, float]]
) -> tuple[float, int, float]:
    """Outcomes per second through the recorder, statements, and the p50 of one record() in µs."""
    sessions = session_factory(url)
    engine = sessions.kw["bind"]
    recorder = OutcomeRecorder(sessions, bucket_seconds=BUCKET_SECONDS, flush_seconds=1.0)
    for target in {r[0] for r in requests}:  # resolve once, as a running server already has
        recorder.record(target[0], target[1], True)
    recorder.flush()
    calls: list[int] = []
    with recorded_statements(engine) as statements:
        started = time.perf_counter()
        for index, ((slug, model, _, _), ok, score, latency) in enumerate(requests):
            if index % 16 == 0:  # time a sample of calls one by one
                t0 = time.perf_counter_ns()
                recorder.record(slug, model, ok, score=score, latency_ms=latency)
                calls.append(time.perf_counter_ns() - t0)
            else:
                recorder.record(slug, model, ok, score=score, latency_ms=latency)
        recorder.close()
        rate = len(requests) / (time.perf_counter() - started)
    return rate, len(statements), statistics.median(calls) / 1000


def run(env: BenchEnv) -> list[Row]:
    naive_n, ours_n = (2_000, 50_000) if env.quick else (10_000, 500_000)
    url = fresh_database(env, "bench_outcomes")
    targets = _setup(url)

    naive_requests = _requests(targets, naive_n, seed=1)
    before = _total(url)
    naive_rate = _one_insert_each(url, naive_requests)
    if _total(url) - before != naive_n:
        raise RuntimeError("the baseline did not store every outcome")

    ours_requests = _requests(targets, ours_n, seed=2)
    before = _total(url)
    ours_rate, statements, p50_us = _recorder(url, ours_requests)
    if _total(url) - before != ours_n + len(targets):
        raise RuntimeError("the recorder did not store every outcome")

    session_factory(url).kw["bind"].dispose()
    ratio = ours_rate / naive_rate
    return [
        Row(
            name="outcomes recorded per second (batching recorder)",
            ours=round(ours_rate),
            baseline=round(naive_rate),
            unit="outcomes/s",
            baseline_name="one INSERT … ON CONFLICT per outcome, autocommit, prepared",
            goal=">= 30x",
            met=ratio >= 30,
            notes={"outcomes": {"ours": ours_n, "baseline": naive_n}, "p50 record() µs": p50_us},
        ),
        Row(
            name="SQL statements per 10,000 outcomes",
            ours=round(statements / ours_n * 10_000, 2),
            baseline=10_000,
            unit="statements",
            baseline_name="one INSERT per outcome",
            higher_is_better=False,
            notes={"statements": statements, "versions": len(targets)},
        ),
    ]


if __name__ == "__main__":
    sys.exit(run_alone(run, sys.argv[1:]))
