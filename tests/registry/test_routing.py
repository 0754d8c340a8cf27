"""Routing snapshots: served from memory, refreshed within the staleness bound, dropped at once
after this process's own commits, and a clear "no model". (Stickiness and monotone canary growth
are property-tested in test_properties.py.)"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from registry import operations, routing, versions
from registry.db import session_factory, unit_of_work
from registry.errors import InvalidInput, TenantNotFound
from registry.routing import Router, build_snapshot
from registry.settings import get_settings
from tests.factories import deploy_new, make_tenant

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _two_versions(url: str, slug: str = "acme") -> tuple[str, str]:
    """`slug` with v1 at 100% and v2 deprecated; returns (v1's model, v2's model)."""
    with unit_of_work(url) as session:
        tenant = make_tenant(session, slug, require_evaluation=False)
        first = deploy_new(session, tenant, recommendation=None)
        deploy_new(session, tenant, recommendation=None)
        versions.promote(session, slug, 1, 100)
        assert first.version == 1
        models = {v.version: v.model_id for v in versions.list_versions(session, slug)}
    return models[1], models[2]


def test_own_commit_is_seen_on_the_next_call(db_url: str) -> None:
    m1, m2 = _two_versions(db_url)
    router = Router(session_factory(db_url), staleness=3600)
    assert router.resolve("acme") == m1
    reads = router.reads
    assert router.resolve("acme", "user-1") == m1
    assert router.reads == reads  # served from the snapshot

    with unit_of_work(db_url) as session:
        versions.promote(session, "acme", 2, 100)
    assert router.resolve("acme") == m2
    assert router.resolve("acme", "user-1") == m2


def test_rolled_back_change_keeps_the_snapshot(db_url: str) -> None:
    m1, _ = _two_versions(db_url)
    router = Router(session_factory(db_url), staleness=3600)
    assert router.resolve("acme") == m1
    reads = router.reads
    with pytest.raises(RuntimeError), unit_of_work(db_url) as session:
        versions.promote(session, "acme", 2, 100)
        raise RuntimeError("abandon the transaction")
    assert router.resolve("acme") == m1
    assert router.reads == reads


def test_change_in_a_savepoint_invalidates_at_the_outer_commit(db_url: str) -> None:
    """A savepoint's release is not a commit: a read taken between it and the outer commit sees
    the old split, and must not outlive the outer commit."""
    m1, m2 = _two_versions(db_url)
    router = Router(session_factory(db_url), staleness=3600)
    assert router.resolve("acme") == m1
    with unit_of_work(db_url) as session:
        operation = operations.queue_operation(session, "acme", "promote", version=2)
        done = operations.run_operation(session, operation.id)  # runs in a savepoint
        assert done.status == "succeeded"
        if not db_url.startswith("sqlite"):  # SQLite: the writer holds the database's lock
            router.invalidate()
            assert router.resolve("acme") == m1  # the outer transaction is not committed yet
    assert router.resolve("acme") == m2


def test_other_process_change_is_seen_once_the_bound_passes(pg_url: str) -> None:
    m1, m2 = _two_versions(pg_url)
    clock = Clock()
    router = Router(session_factory(pg_url), staleness=1.0, clock=clock)
    assert router.resolve("acme") == m1
    _promote_in_another_process(pg_url, "acme", 2)

    clock.now += 0.999
    assert router.resolve("acme") == m1  # within the bound: the snapshot, no query
    clock.now += 0.002
    assert router.resolve("acme") == m2


def test_other_process_change_within_the_bound_in_real_time(pg_url: str) -> None:
    m1, m2 = _two_versions(pg_url)
    bound = 0.3
    router = Router(session_factory(pg_url), staleness=bound)
    assert router.resolve("acme") == m1
    committed = _promote_in_another_process(pg_url, "acme", 2)
    while router.resolve("acme") != m2:
        assert time.time() - committed < bound + 0.2, "change not seen within the bound"
        time.sleep(0.002)


def _promote_in_another_process(url: str, slug: str, version: int) -> float:
    """Promote in a separate Python process; returns the wall-clock time its commit returned."""
    code = (
        "import sys, time\n"
        "from registry import versions\n"
        "from registry.db import unit_of_work\n"
        "with unit_of_work(sys.argv[1]) as s:\n"
        "    versions.promote(s, sys.argv[2], int(sys.argv[3]), 100)\n"
        "print(time.time())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, url, slug, str(version)],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def test_unchanged_split_keeps_the_snapshot_and_its_memo(db_url: str) -> None:
    with unit_of_work(db_url) as session:
        tenant = make_tenant(session, "acme", require_evaluation=False)
        deploy_new(session, tenant, recommendation=None)
        deploy_new(session, tenant, recommendation=None)
        versions.promote(session, "acme", 1, 100)
        versions.promote(session, "acme", 2, 25)
    clock = Clock()
    router = Router(session_factory(db_url), staleness=1.0, clock=clock)
    picks = {f"user-{n}": router.resolve("acme", f"user-{n}") for n in range(200)}
    snapshot = router.snapshot("acme")
    assert len(snapshot.sticky) == 200
    reads = router.reads
    clock.now += 5
    assert router.snapshot("acme") is snapshot  # re-read, same split: the memo is kept
    assert len(snapshot.sticky) == 200
    assert {s: router.resolve("acme", s) for s in picks} == picks
    assert router.reads == reads + 1
    assert router.snapshot("acme") is snapshot
    assert len(snapshot.sticky) == 200


def test_invalidation_during_a_read_is_not_overwritten(pg_url: str) -> None:
    """A read that overlaps an invalidation answers its own call but is not kept."""
    m1, _ = _two_versions(pg_url)
    real = session_factory(pg_url)
    router: Router

    def sessions_with_a_commit_landing() -> Session:
        session = real()
        router.invalidate()  # as if this process committed a change while we read
        return session

    router = Router(sessions_with_a_commit_landing, staleness=3600)  # type: ignore[arg-type]
    assert router.resolve("acme") == m1
    reads = router.reads
    router._sessions = real  # reads no longer overlap an invalidation
    assert router.resolve("acme") == m1
    assert router.reads == reads + 1  # the overlapped read was not kept
    assert router.resolve("acme") == m1
    assert router.reads == reads + 1


def test_no_model_and_unknown_tenants(db_url: str) -> None:
    with unit_of_work(db_url) as session:
        tenant = make_tenant(session, "empty")
        tenant_id = str(tenant.id)
    clock = Clock()
    router = Router(session_factory(db_url), staleness=1.0, clock=clock)
    assert router.resolve("empty") is None
    assert router.resolve("empty", "user-1") is None
    assert router.resolve(tenant_id) is None
    assert router.resolve(uuid.UUID(tenant_id)) is None  # type: ignore[arg-type]
    with pytest.raises(TenantNotFound):
        router.resolve("nobody")
    reads = router.reads
    with pytest.raises(TenantNotFound):
        router.resolve("nobody", "user-1")
    assert router.reads == reads  # an unknown name is remembered within the bound
    with pytest.raises(InvalidInput):
        router.resolve("Not A Slug!")
    with pytest.raises(TenantNotFound):
        router.resolve(str(uuid.uuid4()))

    # A tenant created meanwhile is found once the bound has passed.
    with unit_of_work(db_url) as session:
        make_tenant(session, "nobody")
    clock.now += 1.5
    assert router.resolve("nobody") is None


def test_module_level_resolve_uses_the_settings(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    m1, m2 = _two_versions(db_url)
    monkeypatch.setenv("FTDEPLOY_DATABASE_URL", db_url)
    monkeypatch.setenv("FTDEPLOY_ROUTING_STALENESS_SECONDS", "7.5")
    get_settings.cache_clear()
    routing.reset_default_router()
    try:
        assert routing.default_router().staleness == 7.5
        assert routing.default_router() is routing.default_router()
        assert routing.resolve("acme") == m1
        with unit_of_work(db_url) as session:
            versions.promote(session, "acme", 2, 100)
        assert routing.resolve("acme", "user-9") == m2
    finally:
        get_settings.cache_clear()
        routing.reset_default_router()


def test_staleness_must_be_a_number_of_seconds(sessions: sessionmaker[Session]) -> None:
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            Router(sessions, staleness=bad)


def test_each_version_gets_its_share_of_subjects() -> None:
    """Rendezvous picks split subjects by weight (within a point), and draws without a subject
    split requests by weight."""
    # Fixed ids and a seeded draw: within a point is four standard deviations at 40,000 picks,
    # which random ids and draws miss about once in a few thousand runs.
    random.seed(228)
    for shares in ((90, 10), (75, 25), (50, 30, 20), (40, 30, 20, 5, 5), (99, 1)):
        rows = [(uuid.UUID(int=n + 1), n + 1, f"m{n + 1}", s) for n, s in enumerate(shares)]
        snapshot = build_snapshot(uuid.uuid4(), rows, 0.0)
        subjects = Counter(snapshot.pick(f"subject-{i}") for i in range(40_000))
        draws = Counter(snapshot.pick() for _ in range(40_000))
        for n, share in enumerate(shares):
            assert abs(subjects[f"m{n + 1}"] / 400 - share) < 1, (shares, subjects)
            assert abs(draws[f"m{n + 1}"] / 400 - share) < 1, (shares, draws)


def test_subjects_land_alike_in_every_process() -> None:
    """The hash is not Python's per-process hash(): another interpreter (another hash seed)
    places every subject on the same version."""
    ids = [uuid.UUID(int=n * 0x9E3779B97F4A7C15) for n in (1, 2, 3)]
    rows = [(ids[0], 1, "m1", 50), (ids[1], 2, "m2", 30), (ids[2], 3, "m3", 20)]
    here = [build_snapshot(ids[0], rows, 0.0).pick(f"s{i}") for i in range(300)]
    code = (
        "import uuid\n"
        "from registry.routing import build_snapshot\n"
        f"rows = {[(str(i), n, m, s) for i, n, m, s in rows]!r}\n"
        "rows = [(uuid.UUID(i), n, m, s) for i, n, m, s in rows]\n"
        "snap = build_snapshot(rows[0][0], rows, 0.0)\n"
        "print(','.join(snap.pick(f's{i}') for i in range(300)))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        check=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.strip().split(",") == here
