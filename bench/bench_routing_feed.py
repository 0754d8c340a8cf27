"""Routing at scale: the change feed against one refresh query per tenant per staleness period.

One PostgreSQL database holds 10,000 tenants, each with a canary split (v1 90% / v2 10%),
written in bulk. For 10, 1,000 and 10,000 hot tenants, calls with a subject (tenants and users
drawn at random, users from a pool of 10,000) go through two Routers in this process, staleness
1 s: ours, kept fresh by the process's change feed (LISTEN/NOTIFY); and the baseline, the same
Router without a feed, which re-reads each tenant once per staleness period (the behaviour
before the feed). A warm-up pass loads every snapshot and memo first; the timed window lasts
several staleness periods, so the refreshes are in the figure. Database round trips are counted
in the window (the Router's reads plus, for ours, the feed's heartbeats) and given per staleness
period.

The latency row: another process promotes (alternately v2 and v1 to 100%) at random moments and
prints when each commit returned; a thread of this process resolves every millisecond through
ours and notes when the answer changed.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time

import psycopg

from bench.common import REPO, BenchEnv, Row, fresh_database
from registry.change_feed import process_feed
from registry.db import session_factory
from registry.routing import Router

SIZES = (10, 1_000, 10_000)
STALENESS = 1.0
SUBJECT_POOL = 10_000
MODEL = "ft:gpt-4o-mini-2024-07-18:bench::"

CHILD = """
import json, random, sys, time
from registry import versions
from registry.db import unit_of_work
url, changes = sys.argv[1], int(sys.argv[2])
for i in range(changes):
    time.sleep(random.uniform(0.1, 0.4))
    target = 2 if i % 2 == 0 else 1
    with unit_of_work(url) as session:
        versions.promote(session, "flip", target, 100, actor="bench")
    print(json.dumps({"version": target, "committed_at": time.time()}), flush=True)
"""


def run(env: BenchEnv) -> list[Row]:
    url = fresh_database(env, "bench_routing_feed")
    _setup(url, max(SIZES))
    calls, window, changes = (50_000, 2.5, 20) if env.quick else (200_000, 6.0, 100)
    rows: list[Row] = []
    figures: dict[tuple[str, int], tuple[float, float]] = {}
    for size in SIZES:  # the baseline: one window per size
        load = _Load(url, size, calls, feed=False)
        load.timed(window)
        figures[("per-tenant", size)] = load.figures()
        load.close()
    # Ours: the sizes in turn, three windows each, so that a noisy moment of a shared machine
    # does not fall on one size only; the best window of each.
    loads = {size: _Load(url, size, calls, feed=True) for size in SIZES}
    for _ in range(3):
        for load in loads.values():
            load.timed(window / 3)
    for size, load in loads.items():
        figures[("feed", size)] = load.figures()
        load.close()
    baseline_name = "the same Router without a feed: one refresh query per tenant per period"
    for size in SIZES:
        (ours, our_trips), (base, base_trips) = (
            figures[("feed", size)],
            figures[("per-tenant", size)],
        )
        notes = {"hot_tenants": size, "window_s": window, "staleness_s": STALENESS,
                 "calls_per_pass": calls}  # fmt: skip
        rows.append(Row(f"resolve with subject, {size:,} hot tenants", ours, base, "calls/s",
                        baseline_name, notes=notes))  # fmt: skip
        rows.append(Row(f"DB round trips per staleness period, {size:,} tenants", our_trips,
                        base_trips, "queries", baseline_name, higher_is_better=False,
                        notes=notes))  # fmt: skip
    small, large = figures[("feed", SIZES[0])], figures[("feed", SIZES[-1])]
    scale_name = f"ours at {SIZES[0]} hot tenants (same run)"
    rows.append(Row(f"resolve with subject, {SIZES[-1]:,} vs {SIZES[0]} tenants", large[0],
                    small[0], "calls/s", scale_name, goal=">= 0.5x",
                    met=large[0] >= 0.5 * small[0]))  # fmt: skip
    rows.append(Row(f"DB round trips per period, {SIZES[-1]:,} vs {SIZES[0]} tenants", large[1],
                    small[1], "queries", scale_name, higher_is_better=False,
                    goal="same as at 10 (<= +1)", met=large[1] <= small[1] + 1))  # fmt: skip
    rows.append(_latency(url, changes))
    return rows


def _setup(url: str, count: int) -> None:
    """`count` tenants hot-00000… at v1 90% / v2 10%, and `flip` at v1 100% (v2 deprecated)."""
    from tests.services import libpq_url

    statements = [
        "INSERT INTO tenants (id, slug, created_at) SELECT gen_random_uuid(), "
        f"'hot-' || lpad(g::text, 5, '0'), now() FROM generate_series(0, {count - 1}) g",
        "INSERT INTO tenants (id, slug, created_at) VALUES (gen_random_uuid(), 'flip', now())",
        "INSERT INTO ai_finetuning_runs (id, tenant_id, openai_job_id, status, result_metrics, "
        "created_at) SELECT gen_random_uuid(), t.id, 'ftjob-' || t.slug || '-' || v, "
        "'succeeded', '{}', now() FROM tenants t, generate_series(1, 2) v",
        "INSERT INTO ai_model_versions (id, tenant_id, name, model_id, version, status, run_id, "
        "metrics, traffic_percent, created_at) SELECT gen_random_uuid(), r.tenant_id, "
        f"'v' || v, '{MODEL}' || t.slug || v, v, CASE WHEN t.slug = 'flip' AND v = 2 "
        "THEN 'deprecated' ELSE 'production' END, r.id, '{}', CASE WHEN t.slug = 'flip' "
        "THEN (2 - v) * 100 WHEN v = 1 THEN 90 ELSE 10 END, now() FROM ai_finetuning_runs r "
        "JOIN tenants t ON t.id = r.tenant_id, generate_series(1, 2) v "
        "WHERE r.openai_job_id = 'ftjob-' || t.slug || '-' || v",
        "ANALYZE",
    ]
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


class _Load:
    """Calls with a subject over `size` hot tenants through one Router, warmed up."""

    def __init__(self, url: str, size: int, calls: int, feed: bool) -> None:
        sessions = session_factory(url)
        self.feed = process_feed(sessions, STALENESS / 2) if feed else None
        self.router = Router(sessions, staleness=STALENESS, feed=self.feed)
        if self.feed is not None:
            deadline = time.monotonic() + 30
            while self.feed.vouched_at == -math.inf and time.monotonic() < deadline:
                time.sleep(0.01)
        rng = random.Random(size)
        slugs = [f"hot-{n:05d}" for n in range(size)]
        users = [f"user-{rng.getrandbits(48):012x}" for _ in range(SUBJECT_POOL)]
        self.pairs = [(rng.choice(slugs), rng.choice(users)) for _ in range(calls)]
        self.calls, self.seconds, self.trips, self.best = 0, 0.0, 0, 0.0
        for slug in slugs:  # warm up: every snapshot, then (when it is quick) every memo entry
            self.router.resolve(slug)
        if feed:
            self.timed(math.inf, len(self.pairs))
            self.calls, self.seconds, self.trips, self.best = 0, 0.0, 0, 0.0

    def timed(self, seconds: float, limit: float = math.inf) -> None:
        """Call for `seconds` (or `limit` calls), in chunks, counting round trips."""
        resolve, router, feed = self.router.resolve, self.router, self.feed
        reads, queries = router.reads, feed.queries if feed else 0
        done, started, chunk = 0, time.perf_counter(), 100
        while (elapsed := time.perf_counter() - started) < seconds and done < limit:
            offset = done % len(self.pairs)
            for slug, user in self.pairs[offset : offset + chunk]:
                resolve(slug, user)
            done += len(self.pairs[offset : offset + chunk])
        self.calls += done
        self.seconds += elapsed
        self.trips += router.reads - reads + ((feed.queries - queries) if feed else 0)
        self.best = max(self.best, done / elapsed if elapsed else 0.0)

    def figures(self) -> tuple[float, float]:
        """(best calls/s of the windows, round trips per staleness period)."""
        return self.best, self.trips / (self.seconds / STALENESS)

    def close(self) -> None:
        self.router.close()


def _latency(url: str, changes: int) -> Row:
    sessions = session_factory(url)
    feed = process_feed(sessions, STALENESS / 2)
    router = Router(sessions, staleness=STALENESS, feed=feed)
    seen: list[tuple[float, str | None]] = []
    stop = threading.Event()

    def watch() -> None:
        last = router.resolve("flip")
        while not stop.is_set():
            model = router.resolve("flip")
            if model != last:
                seen.append((time.time(), model))
                last = model
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        while feed.vouched_at == -math.inf:
            time.sleep(0.01)
        watcher.start()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run(
            [sys.executable, "-c", CHILD, url, str(changes)], env=env, cwd=REPO,
            capture_output=True, text=True, check=True, timeout=changes * 1.0 + 60,
        )  # fmt: skip
        time.sleep(STALENESS + 0.5)
    finally:
        stop.set()
        watcher.join(5)
        router.close()
    delays = []
    for line in out.stdout.splitlines():
        commit = json.loads(line)
        model = f"{MODEL}flip{commit['version']}"
        first = next((t for t, m in seen if m == model and t >= commit["committed_at"] - 0.05),
                     math.inf)  # fmt: skip
        delays.append(max(0.0, first - commit["committed_at"]) * 1000)
    p99 = statistics.quantiles(delays, n=100)[98] if len(delays) > 1 else delays[0]
    return Row("promote in another process -> served here, p99", p99, STALENESS * 1000, "ms",
               "the staleness bound (a refresh per tenant per period)", higher_is_better=False,
               goal="< 100 ms", met=p99 < 100,
               notes={"changes": len(delays), "median_ms": round(statistics.median(delays), 2),
                      "max_ms": round(max(delays), 2)})  # fmt: skip


if __name__ == "__main__":
    from bench.common import run_alone

    raise SystemExit(run_alone(run, sys.argv[1:]))
