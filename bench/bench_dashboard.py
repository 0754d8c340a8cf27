"""The dashboard's server-side render time, and its statements per page.

One database: 1,000 tenants (quick: 200), each with v1 at 90% and v2 a live canary at 10% with
outcome counters (the sweep benchmark's fleet), and the first tenant with 10,000 audit events
(quick: 2,000). A second database holds 10 tenants with 10 events: the baseline, measured in the
same run. Both are analysed after the bulk load, as autovacuum soon would. Each page is
requested in-process through the real app (starlette's TestClient, a key in the header, so no
sign-in round trip): the time from request to the last byte of HTML, median of several requests
after one warm-up. Statements are counted with a `before_cursor_execute` listener; their number
must be the same for 10 and for 1,000 tenants, and for 10 and 10,000 events.

Run alone: `python -m bench.bench_dashboard [--quick]` (starts its own PostgreSQL and Redis).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import insert, select

from bench.bench_sweep import _populate
from bench.common import BenchEnv, Row, fresh_database, run_alone
from registry import keys
from registry.db import session_factory
from registry.models import Tenant, TrafficEvent
from registry.settings import get_settings
from tests.statements import recorded_statements

GOAL_MS = 100.0


def _events(url: str, slug: str, count: int, now: datetime) -> None:
    sessions = session_factory(url)
    with sessions() as session, session.begin():
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == slug))
        start = now - timedelta(seconds=count * 60)
        rows: list[dict[str, Any]] = []
        for i in range(count):
            share = 10 + i % 80
            rows.append(
                {
                    "tenant_id": tenant_id,
                    "action": "promote",
                    "version": 2,
                    "actor": "operator:bench",
                    "reason": f"bench change {i}",
                    "split_before": {"1": 100 - share, "2": share},
                    "split_after": {"1": 90 - i % 80, "2": 10 + (i + 1) % 80},
                    "created_at": start + timedelta(seconds=60 * i),
                }
            )
        session.execute(insert(TrafficEvent), rows)


def _analyze(url: str) -> None:
    """Planner statistics, as autovacuum gathers them soon after a bulk load: without them the
    planner takes each freshly filled table for empty and walks 1,000 canaries by nested loops
    (twice the time of the hash joins it picks once it knows their sizes)."""
    from tests.services import libpq_url

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("ANALYZE")


# The key's row is cached for a second by default: a request that found it due read it again,
# inside the count (12 statements for the tenant page, 13 about once a second). Held for the run,
# the key is read once, at the warm-up, and each page counts only its own statements.
KEY_CACHE_SECONDS = "3600"


@contextmanager
def _pointed_at(url: str, data_dir: str) -> Iterator[None]:
    names = ("FTDEPLOY_DATABASE_URL", "FTDEPLOY_DATA_DIR", "FTDEPLOY_API_KEY_CACHE_SECONDS")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["FTDEPLOY_DATABASE_URL"] = url
    os.environ["FTDEPLOY_DATA_DIR"] = data_dir
    os.environ["FTDEPLOY_API_KEY_CACHE_SECONDS"] = KEY_CACHE_SECONDS
    get_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


def _measure(url: str, rounds: int, data_dir: str) -> dict[str, tuple[float, int]]:
    """Per page: (p50 ms, statements per request)."""
    from starlette.testclient import TestClient

    from worker.http.app import create_app

    sessions = session_factory(url)
    with sessions() as session, session.begin():
        _, clear = keys.create_key(session, f"bench-{uuid.uuid4().hex[:8]}", "read")
    engine = sessions.kw["bind"]
    results = {}
    with _pointed_at(url, data_dir), TestClient(create_app()) as client:
        client.headers["Authorization"] = f"Bearer {clear}"
        for name, path in (("fleet", "/"), ("tenant", "/tenants/t000000")):
            assert client.get(path).status_code == 200  # warm-up (and the key cache)
            timings: list[float] = []
            counts: set[int] = set()  # statements per request
            with recorded_statements(engine) as statements:
                for _ in range(rounds):
                    statements.clear()
                    started = time.perf_counter()
                    response = client.get(path)
                    timings.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.text[:500]
                    counts.add(len(statements))
            # Every request of a page the same: a statement only some requests make (a lazy
            # load, a cache coming due) would make the figure depend on which request was last.
            assert len(counts) == 1, (
                f"{path}: {sorted(counts)} statements from one request to another"
            )
            results[name] = (statistics.median(timings), counts.pop())
    return results


def run(env: BenchEnv) -> list[Row]:
    import tempfile

    tenants, changes = (200, 2_000) if env.quick else (1_000, 10_000)
    rounds = 5 if env.quick else 15
    now = datetime.now(UTC)
    big = fresh_database(env, "bench_dashboard")
    small = fresh_database(env, "bench_dashboard_base")
    _populate(big, tenants, now)
    _events(big, "t000000", changes, now)
    _populate(small, 10, now)
    _events(small, "t000000", 10, now)
    for url in (big, small):
        _analyze(url)
    with tempfile.TemporaryDirectory() as data_dir:
        ours = _measure(big, rounds, data_dir)
        base = _measure(small, rounds, data_dir)
    rows = []
    for name, what, baseline in (
        ("fleet", f"fleet page, {tenants:,} tenants", "the same page, 10 tenants"),
        ("tenant", f"tenant page, {changes:,} audit events", "the same page, 10 events"),
    ):
        (ms, statements), (base_ms, base_statements) = ours[name], base[name]
        rows.append(
            Row(
                f"{what}: render",
                round(ms, 2),
                round(base_ms, 2),
                "ms p50",
                baseline,
                higher_is_better=False,
                goal=f"< {GOAL_MS:g} ms p50",
                met=ms < GOAL_MS,
            )
        )
        rows.append(
            Row(
                f"{what}: statements",
                statements,
                base_statements,
                "statements",
                baseline,
                higher_is_better=False,
                goal="same as the baseline",
                met=statements == base_statements,
            )
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(run_alone(run, sys.argv))
