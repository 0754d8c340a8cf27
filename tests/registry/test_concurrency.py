"""Many workers changing the same tenants at once: the invariant holds during and after.

PostgreSQL: 8 threads, each with its own engine and connection, x 300 random operations (register
and deploy by each strategy, promote to a random percent, roll back, change the policy) over 20
tenants, while a checker reads consistent snapshots. SQLite: the same with 3 processes x 60
operations over 5 tenants. Checked: production traffic sums to 100 or there is none, only
production versions carry traffic, versions are 1..n, the audit trail is one unbroken chain whose
last split is the current one, deployment rows follow their versions, and there is exactly one
audit event per successful change. Run with `-s` to see the throughput.
"""

from __future__ import annotations

import multiprocessing
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from registry.models import Deployment
from tests.registry import churn


class Checker(threading.Thread):
    """Reads the whole registry in one snapshot, again and again, until stopped."""

    def __init__(self, url: str, pause: float) -> None:
        super().__init__(daemon=True)
        self.engine = churn.engine_for(url)
        self.pause = pause
        self.samples = 0
        self.found: list[str] = []
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                with churn.snapshot_session(self.engine) as session:
                    state = churn.read_state(session, full_trail=False)
                    self.found += churn.violations(state)
                self.samples += 1
                self._stop_event.wait(self.pause)
        except BaseException as error:  # reported by the test, not lost in a thread
            self.error = error

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)
        self.engine.dispose()


def _run(
    url: str,
    tenants: int,
    workers: int,
    ops: int,
    run_all: Callable[[list[tuple[str, list[str], int, int, str]]], Iterable[churn.Tally]],
    pause: float,
    label: str,
) -> None:
    slugs = churn.setup_tenants(url, tenants, seed=7)
    jobs = [(url, slugs, ops, 1000 + index, f"w{index}") for index in range(workers)]
    checker = Checker(url, pause)
    checker.start()
    started = time.perf_counter()
    try:
        tallies = list(run_all(jobs))
    finally:
        elapsed = time.perf_counter() - started
        checker.stop()
    assert checker.error is None, repr(checker.error)

    engine = churn.engine_for(url)
    try:
        with churn.snapshot_session(engine) as session:
            state = churn.read_state(session)
            strategies = set(
                session.scalars(
                    select(Deployment.strategy).where(Deployment.version_id.is_not(None))
                )
            )
    finally:
        engine.dispose()

    total_ops = sum(t.ops for t in tallies)
    ok = sum((t.ok for t in tallies), Counter[str]())
    refused = sum((t.refused for t in tallies), Counter[str]())
    changes = sum((t.changes for t in tallies), Counter[str]())
    unexpected = [line for t in tallies for line in t.unexpected]
    events = {slug: len(state.events.get(slug, [])) for slug in slugs}
    slowest = max(t.seconds for t in tallies)
    print(
        f"\n[{label}] {workers} workers x {ops} ops over {tenants} tenants: {total_ops} ops in "
        f"{elapsed:.1f} s = {total_ops / elapsed:.0f} ops/s; ok {dict(ok)}; refused "
        f"{dict(refused)}; {sum(events.values())} audit events; "
        f"{sum(len(v) for v in state.versions.values())} versions; "
        f"checker samples {checker.samples}; slowest worker {slowest:.1f} s "
        f"({total_ops / slowest:.0f} ops/s without process start-up)"
    )

    assert unexpected == []
    assert checker.found == [], checker.found[:10]
    assert churn.violations(state) == []
    # Exactly one audit event per committed traffic change, tenant by tenant.
    assert events == {slug: changes[slug] for slug in slugs}
    # The run exercised what it claims to: every operation and every strategy, under a checker.
    assert total_ops == workers * ops
    assert set(ok) == set(churn.WEIGHTS)
    assert strategies == set(churn.STRATEGIES)
    assert refused["NothingToRollBack"] > 0
    assert checker.samples >= 2


def test_parallel_workers_keep_the_invariant_on_postgresql(pg_url: str) -> None:
    def threads(jobs: list[tuple[str, list[str], int, int, str]]) -> Iterable[churn.Tally]:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            return list(pool.map(churn.run_worker_args, jobs))

    _run(pg_url, tenants=20, workers=8, ops=300, run_all=threads, pause=0.25, label="postgresql")


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh migrated SQLite file (PostgreSQL has its own, larger run above)."""
    path = tmp_path / "churn.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


def test_parallel_processes_keep_the_invariant_on_sqlite(sqlite_url: str) -> None:
    def processes(jobs: list[tuple[str, list[str], int, int, str]]) -> Iterable[churn.Tally]:
        # spawn: a fresh interpreter per worker, nothing inherited from this process's engines.
        with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
            return pool.map(churn.run_worker_args, jobs)

    _run(sqlite_url, tenants=5, workers=3, ops=60, run_all=processes, pause=0.2, label="sqlite")
