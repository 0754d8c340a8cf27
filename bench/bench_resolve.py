"""Routing: `registry.routing.resolve` against the seed's one-query-per-request resolve.

Both run in this process against the same PostgreSQL database, on the same tenant (a canary
split, v1 90% / v2 10%). The baseline is the seed's `getActiveModel` done as cheaply as it can
be: a prepared psycopg statement on an open autocommit connection, then a weighted pick (by the
subject's hash when there is one). Ours is the serving app's call, `registry.routing.resolve`,
through the default Router built from the settings (staleness 1 s).

Subjects are drawn from a pool of 10,000 users, as a serving app sees returning users; a row of
its own measures subjects seen for the first time. p50 figures are per call, timed one by one
with `perf_counter_ns` (the timer's own cost, ~50 ns, is included, not subtracted).

The staleness rows: another process promotes (alternately v2 and v1 to 100%) at random moments
and prints when each commit returned; this process polls `resolve` every millisecond and notes
when the answer changed. And a promotion committed in this process must show on the next call.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.common import REPO, BenchEnv, Row, fresh_database
from registry import routing, versions
from registry.db import unit_of_work
from registry.deployments import deploy
from registry.jobs.openai_jobs import JobSnapshot
from registry.jobs.runs import record_run
from registry.routing import subject_number
from registry.settings import get_settings
from registry.tenants import PolicyChanges, create_tenant, set_policy

SEED_QUERY = (
    "SELECT model_id, traffic_percent FROM ai_model_versions "
    "WHERE tenant_id = %s AND status = 'production' ORDER BY version DESC"
)
SUBJECT_POOL = 10_000

CHILD = """
import json, random, sys, time
from registry import versions
from registry.db import unit_of_work
changes, bound = int(sys.argv[1]), float(sys.argv[2])
for i in range(changes):
    # A random phase against the reader's refreshes, so the figures span the whole bound; and
    # longer than the bound, so every split is in force long enough to be seen.
    time.sleep(random.uniform(bound + 0.2, bound + 1.2))
    target = 2 if i % 2 == 0 else 1
    with unit_of_work() as session:
        versions.promote(session, "stale", target, 100, actor="bench")
    print(json.dumps({"version": target, "committed_at": time.time()}), flush=True)
"""


def run(env: BenchEnv) -> list[Row]:
    url = fresh_database(env, "bench_resolve")
    ids = _setup(url)
    sizes = (
        {"calls": 50_000, "seed_calls": 500, "samples": 20_000, "seed_samples": 300,
         "cold": 10_000, "changes": 2}
        if env.quick
        else {"calls": 1_000_000, "seed_calls": 5_000, "samples": 200_000, "seed_samples": 2_000,
              "cold": 100_000, "changes": 6}
    )  # fmt: skip
    rows: list[Row] = []
    with _settings(FTDEPLOY_DATABASE_URL=url):
        bound = get_settings().routing_staleness_seconds
        rows += _speed(url, ids["canary"], sizes)
        rows += _staleness(url, ids, sizes["changes"], bound)
    return rows


# -- setup -------------------------------------------------------------------------------------


def _setup(url: str) -> dict[str, uuid.UUID]:
    """Tenant `canary` at v1 90% / v2 10%; tenant `stale` with v1 at 100% and v2 deprecated."""
    ids: dict[str, uuid.UUID] = {}
    with unit_of_work(url) as session:
        for slug in ("canary", "stale"):
            tenant = create_tenant(session, slug)
            set_policy(session, tenant.id, PolicyChanges(require_evaluation=False))
            for n in (1, 2):
                job = JobSnapshot(
                    job_id=f"ftjob-bench-{slug}-{n}",
                    status="succeeded",
                    base_model="gpt-4o-mini-2024-07-18",
                    fine_tuned_model=f"ft:gpt-4o-mini-2024-07-18:bench::{slug}{n}",
                    trained_tokens=1000,
                    error=None,
                    finished_at=datetime.now(UTC),
                    tenant=slug,
                )
                run = record_run(session, tenant, job)
                deploy(session, tenant.id, run.id, actor="bench")
            ids[slug] = tenant.id
        versions.promote(session, "canary", 1, 100, actor="bench")
        versions.promote(session, "canary", 2, 10, actor="bench")
        versions.promote(session, "stale", 1, 100, actor="bench")
    return ids


@contextmanager
def _settings(**values: str | None) -> Any:
    """Point this process's settings (and the default Router) at the bench database."""
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()
    routing.reset_default_router()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
        routing.reset_default_router()


# -- throughput and latency ----------------------------------------------------------------------


def _seed_resolver(url: str) -> tuple[Callable[[uuid.UUID, str | None], str | None], Any]:
    """The seed's resolve: one (prepared) query per call, then a weighted pick."""
    from tests.services import libpq_url

    conn = psycopg.connect(libpq_url(url), autocommit=True)

    def seed_resolve(tenant_id: uuid.UUID, subject: str | None = None) -> str | None:
        rows = conn.execute(SEED_QUERY, (tenant_id,), prepare=True).fetchall()
        if not rows:
            return None
        point = random.random() * 100 if subject is None else subject_number(subject) % 100
        for model_id, percent in rows:
            point -= percent
            if point < 0:
                return str(model_id)
        return str(rows[0][0])

    return seed_resolve, conn


def _speed(url: str, tenant_id: uuid.UUID, sizes: dict[str, int]) -> list[Row]:
    seed_resolve, conn = _seed_resolver(url)
    resolve = routing.resolve
    rng = random.Random(6)
    pool = [f"user-{rng.getrandbits(48):012x}" for _ in range(SUBJECT_POOL)]
    calls = [rng.choice(pool) for _ in range(sizes["calls"])]
    seed_calls = calls[: sizes["seed_calls"]]
    try:
        # Warm both (connections, prepared statement, first snapshot) before timing.
        for subject in pool[:100]:
            resolve("canary", subject)
            seed_resolve(tenant_id, subject)

        ours_plain = _rate(lambda n: _loop_plain(resolve, "canary", n), sizes["calls"])
        seed_plain = _rate(lambda n: _loop_plain(seed_resolve, tenant_id, n), sizes["seed_calls"])
        ours_sub = _rate(lambda n: _loop_subjects(resolve, "canary", calls), len(calls))
        seed_sub = _rate(
            lambda n: _loop_subjects(seed_resolve, tenant_id, seed_calls), len(seed_calls)
        )

        p50 = {
            "ours_plain": _p50(resolve, "canary", [None] * sizes["samples"]),
            "seed_plain": _p50(seed_resolve, tenant_id, [None] * sizes["seed_samples"]),
            "ours_sub": _p50(resolve, "canary", calls[: sizes["samples"]]),
            "seed_sub": _p50(seed_resolve, tenant_id, calls[: sizes["seed_samples"]]),
            "ours_cold": _p50(
                resolve, "canary", [f"new-{rng.getrandbits(48):012x}" for _ in range(sizes["cold"])]
            ),
        }
        timer = _timer_cost()
    finally:
        conn.close()
    seed_name = "seed: one prepared psycopg query per call, same PostgreSQL"
    notes = {"subjects": f"{len(calls):,} calls over a pool of {SUBJECT_POOL:,} users",
             "timer_overhead_ns": timer, "split": "v1 90% / v2 10%"}  # fmt: skip
    ratio_goal = ">= 100x"
    return [
        Row("resolve, no subject", ours_plain, seed_plain, "calls/s", seed_name,
            goal=ratio_goal, met=ours_plain >= 100 * seed_plain, notes=notes),
        Row("resolve, with subject", ours_sub, seed_sub, "calls/s", seed_name,
            goal=ratio_goal, met=ours_sub >= 100 * seed_sub, notes=notes),
        Row("resolve p50, no subject", p50["ours_plain"], p50["seed_plain"], "µs", seed_name,
            higher_is_better=False, goal="< 2 µs", met=p50["ours_plain"] < 2, notes=notes),
        Row("resolve p50, with subject", p50["ours_sub"], p50["seed_sub"], "µs", seed_name,
            higher_is_better=False, goal="< 2 µs", met=p50["ours_sub"] < 2, notes=notes),
        Row("resolve p50, first-seen subject", p50["ours_cold"], p50["seed_sub"], "µs",
            seed_name, higher_is_better=False,
            notes={"what": "each subject new to the process: one hash + rendezvous"}),
    ]  # fmt: skip


def _loop_plain(resolve: Callable[..., Any], tenant: Any, n: int) -> None:
    for _ in range(n):
        resolve(tenant)


def _loop_subjects(resolve: Callable[..., Any], tenant: Any, subjects: list[str]) -> None:
    for subject in subjects:
        resolve(tenant, subject)


def _rate(body: Callable[[int], None], n: int) -> float:
    started = time.perf_counter()
    body(n)
    return n / (time.perf_counter() - started)


def _p50(resolve: Callable[..., Any], tenant: Any, subjects: Sequence[str | None]) -> float:
    clock = time.perf_counter_ns
    samples = [0] * len(subjects)
    for index, subject in enumerate(subjects):
        began = clock()
        resolve(tenant, subject)
        samples[index] = clock() - began
    return statistics.median(samples) / 1000


def _timer_cost() -> int:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(10_000):
        began = clock()
        samples.append(clock() - began)
    return int(statistics.median(samples))


# -- staleness ---------------------------------------------------------------------------------


def _staleness(url: str, ids: dict[str, uuid.UUID], changes: int, bound: float) -> list[Row]:
    models = {1: "ft:gpt-4o-mini-2024-07-18:bench::stale1",
              2: "ft:gpt-4o-mini-2024-07-18:bench::stale2"}  # fmt: skip
    resolve = routing.resolve
    assert resolve("stale") == models[1]
    seen: list[tuple[float, str | None]] = []
    stop = threading.Event()

    def watch() -> None:
        last = resolve("stale")
        while not stop.is_set():
            model = resolve("stale")
            if model != last:
                seen.append((time.time(), model))
                last = model
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    child_env = {**os.environ, "FTDEPLOY_DATABASE_URL": url, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(changes), str(bound)],
        env=child_env, cwd=REPO, capture_output=True, text=True, check=True,
        timeout=changes * (bound + 1.5) + 60,
    )  # fmt: skip
    time.sleep(bound + 0.5)
    stop.set()
    watcher.join(5)
    commits = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    delays = []
    for commit in commits:
        model = models[commit["version"]]
        first = next(
            (t for t, m in seen if m == model and t >= commit["committed_at"] - 0.05), None
        )
        delays.append(float("inf") if first is None else max(0.0, first - commit["committed_at"]))
    worst = max(delays) if delays else float("inf")

    # This process's own change: the very next call must see it.
    before = resolve("stale")
    target = 2 if before == models[1] else 1
    with unit_of_work(url) as session:
        versions.promote(session, "stale", target, 100, actor="bench")
    returned = time.perf_counter()
    after = resolve("stale")
    own = time.perf_counter() - returned
    seed_name = "the configured staleness bound (FTDEPLOY_ROUTING_STALENESS_SECONDS)"
    return [
        Row("staleness, promotion in another process (max)", worst, bound, "s", seed_name,
            higher_is_better=False, goal="<= bound (+ one read)",
            met=worst <= bound + 0.05,
            notes={"each_s": [round(d, 4) for d in delays],
                   "mean_s": round(statistics.mean(delays), 4) if delays else None}),
        Row("staleness, promotion in this process", own, bound, "s", seed_name,
            higher_is_better=False, goal="next call", met=after == models[target],
            notes={"next_call_saw_it": after == models[target]}),
    ]  # fmt: skip
