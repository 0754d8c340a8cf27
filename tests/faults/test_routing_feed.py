"""Routing under database faults: the listening connection terminated again and again while
splits change (staleness stays within its bound), and PostgreSQL stopped for a minute under a
serving process (no call fails, the last split is served, and routing recovers by itself)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from registry import versions
from registry.change_feed import APPLICATION_NAME
from registry.change_sources import PostgresFeed
from registry.db import session_factory, unit_of_work
from registry.errors import RoutingUnavailable
from registry.routing import Router
from tests import services
from tests.faults.checks import check_all
from tests.registry.test_routing import _two_versions
from tests.services import libpq_url

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
STALENESS = 0.5
PROMOTER = """
import json, random, sys, time
from registry import versions
from registry.db import unit_of_work
url, changes = sys.argv[1], int(sys.argv[2])
for i in range(changes):
    # Further apart than the staleness bound plus one read: each split is served before the next
    # replaces it (the bound promises the answer's age, not that a split left sooner is seen).
    time.sleep(random.uniform(0.8, 1.2))
    target = 2 if i % 2 == 0 else 1
    with unit_of_work(url) as session:
        versions.promote(session, "acme", target, 100, actor="fault-test")
    print(json.dumps({"model_version": target, "committed_at": time.time()}), flush=True)
"""


class Watcher:
    """A serving thread: resolves every 2 ms, notes when the answer changes and any error."""

    def __init__(self, router: Router, slug: str) -> None:
        self.router, self.slug = router, slug
        self.changes: list[tuple[float, str | None]] = []
        self.errors: list[BaseException] = []
        self.calls = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = self.router.resolve(self.slug, "user-1")
        while not self.stop.is_set():
            try:
                model = self.router.resolve(self.slug, "user-1")
            except BaseException as error:  # every failure is the test's business
                self.errors.append(error)
                model = last
            self.calls += 1
            if model != last:
                self.changes.append((time.time(), model))
                last = model
            time.sleep(0.002)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_listener_terminated_while_splits_change(pg_url: str) -> None:
    models = dict(zip((1, 2), _two_versions(pg_url), strict=True))
    feed = PostgresFeed(pg_url, STALENESS / 2)
    router = Router(session_factory(pg_url), staleness=STALENESS, feed=feed)
    killed: list[int] = []
    stop = threading.Event()

    def terminate_the_listener() -> None:
        with psycopg.connect(libpq_url(pg_url), autocommit=True) as admin:
            while not stop.wait(0.4):
                rows = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s", (APPLICATION_NAME,),
                ).fetchall()  # fmt: skip
                killed.extend(1 for (ok,) in rows if ok)

    killer = threading.Thread(target=terminate_the_listener, daemon=True)
    try:
        with Watcher(router, "acme") as watcher:
            killer.start()
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            out = subprocess.run(
                [sys.executable, "-c", PROMOTER, pg_url, "12"], cwd=REPO, env=env,
                capture_output=True, text=True, check=True, timeout=120,
            )  # fmt: skip
            time.sleep(STALENESS + 0.5)
    finally:
        stop.set()
        killer.join(10)
        router.close()
        feed.close()
    assert len(killed) >= 5, "the listening connection was not terminated often enough"
    assert not watcher.errors, watcher.errors[:3]
    commits = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(commits) == 12
    delays = []
    for commit in commits:
        model = models[commit["model_version"]]
        seen = next((t for t, m in watcher.changes
                     if m == model and t >= commit["committed_at"] - 0.05), None)  # fmt: skip
        # Never served counts as a delay past the bound: the assertion below reports them all.
        delays.append(float("inf") if seen is None else seen - commit["committed_at"])
    # Within the bound plus one read, even when the feed was down at the time.
    assert max(delays) <= STALENESS + 0.15, delays
    check_all(pg_url)


def test_serving_through_a_postgres_outage(
    own_postgres: services.Service, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_postgres.url
    m1, m2 = _two_versions(url)
    caplog.set_level(logging.INFO, "ftdeploy.routing")
    feed = PostgresFeed(url, STALENESS / 2)
    router = Router(session_factory(url), staleness=STALENESS, feed=feed)
    try:
        with Watcher(router, "acme") as watcher:
            time.sleep(1)
            outage = threading.Thread(target=own_postgres.restart, args=(60.0,), daemon=True)
            outage.start()
            time.sleep(5)
            calls = watcher.calls
            with pytest.raises(RoutingUnavailable):
                router.resolve("never-seen")
            time.sleep(5)
            assert watcher.calls > calls + 1000  # still answering, fast
            assert router.resolve("acme", "user-2") == m1
            outage.join(120)
            assert not outage.is_alive()
            with unit_of_work(url) as session:  # a change right after the outage
                versions.promote(session, "acme", 2, 100, actor="fault-test")
            committed = time.time()
            deadline = time.monotonic() + 15
            while router.resolve("acme", "user-1") != m2:
                assert time.monotonic() < deadline, "routing did not recover"
                time.sleep(0.01)
            recovered_after = time.time() - committed
    finally:
        router.close()
        feed.close()
    assert not watcher.errors, watcher.errors[:3]
    assert [m for _, m in watcher.changes] in ([m2], [])  # m1 throughout the outage
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("routing.serving_last_known") == 1  # one tenant, one outage
    assert messages.count("routing.database_unavailable") == 1
    assert messages.count("routing.database_recovered") == 1
    assert "routing.feed_down" in messages and "routing.feed_up" in messages
    assert recovered_after < 10
    check_all(url)
