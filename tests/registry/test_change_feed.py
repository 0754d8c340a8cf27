"""The routing change feed and what the Router does with it: changes committed elsewhere are
delivered, only changed tenants are re-read, own writes are read at once, any spelling of a
tenant is one snapshot, memos stay within their bytes, and a failing database is survived."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from registry import versions
from registry.change_feed import ChangeBatch, ChangeFeed, Subscription, process_feed
from registry.db import session_factory, unit_of_work
from registry.errors import InvalidInput, RoutingUnavailable, TenantNotFound
from registry.routing import Router
from tests.factories import deploy_new, make_tenant
from tests.registry.test_routing import Clock, _promote_in_another_process, _two_versions


@pytest.fixture
def routers() -> Iterator[list[Router]]:
    """Routers to close after the test (their feed stops with its last subscriber)."""
    made: list[Router] = []
    yield made
    for router in made:
        router.close()


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _feed_router(url: str, routers: list[Router], staleness: float = 0.2, **kw: object) -> Router:
    feed = process_feed(session_factory(url), staleness / 2)
    router = Router(session_factory(url), staleness=staleness, feed=feed, **kw)  # type: ignore[arg-type]
    routers.append(router)
    _wait(lambda: feed.vouched_at > float("-inf"), 20, "the feed to start")
    return router


def _tenants(url: str, count: int) -> dict[str, tuple[str, str]]:
    return {f"t{n}": _two_versions(url, f"t{n}") for n in range(count)}


def test_feed_delivers_a_change_committed_in_another_process(db_url: str) -> None:
    _two_versions(db_url)
    feed = process_feed(session_factory(db_url), 0.05)
    with feed.subscription() as changes:
        first = changes.get(timeout=20)
        assert first is not None and first.resync  # starting: revalidate whatever is held
        _promote_in_another_process(db_url, "acme", 2)
        batch = changes.get(timeout=10)
    assert batch is not None and not batch.resync
    with unit_of_work(db_url) as session:
        tenant_id = versions.find_tenant(session, "acme").id
    assert set(batch.tenants) == {tenant_id}
    assert batch.tenants[tenant_id] >= 1
    assert feed.closed  # its last subscriber left


def test_only_changed_tenants_are_read_again(db_url: str, routers: list[Router]) -> None:
    models = _tenants(db_url, 12)
    router = _feed_router(db_url, routers)
    for slug, (m1, _) in models.items():
        assert router.resolve(slug, "user-1") == m1
    reads = router.reads
    assert reads == 12
    time.sleep(1.0)  # five staleness periods: no tenant is read again
    for slug, (m1, _) in models.items():
        assert router.resolve(slug, "user-1") == m1
    assert router.reads == reads

    _promote_in_another_process(db_url, "t3", 2)
    _wait(lambda: router.resolve("t3") == models["t3"][1], 5, "the change to be served")
    for slug, (m1, _) in models.items():
        if slug != "t3":
            assert router.resolve(slug) == m1
    assert router.reads == reads + 1  # t3, and only t3


def test_own_write_is_read_at_once_and_only_once(db_url: str, routers: list[Router]) -> None:
    m1, m2 = _two_versions(db_url)
    router = _feed_router(db_url, routers)
    assert router.resolve("acme") == m1
    reads = router.reads
    with unit_of_work(db_url) as session:
        versions.promote(session, "acme", 2, 100)
    assert router.resolve("acme") == m2  # the next call, not the feed, saw it
    assert router.reads == reads + 1
    time.sleep(0.5)  # the feed's notice of the same change arrives: already read, not again
    assert router.resolve("acme") == m2
    assert router.reads == reads + 1


def test_every_spelling_of_a_tenant_is_one_snapshot(db_url: str) -> None:
    m1, _ = _two_versions(db_url)
    router = Router(session_factory(db_url), staleness=3600)
    tenant_id = router.snapshot("acme").tenant_id
    text = str(tenant_id)
    spellings = [text, text.upper(), text.replace("-", ""), "{" + text + "}",
                 "urn:uuid:" + text, tenant_id, "acme"]  # fmt: skip
    for name in spellings:
        assert router.resolve(name, "user-1") == m1  # type: ignore[arg-type]
    assert router.reads == 1
    assert list(router._snapshots) == [tenant_id]
    with pytest.raises(InvalidInput):
        router.resolve("ACME")  # a slug is lowercase; not a spelling of anything


def test_memos_are_bounded_by_bytes(db_url: str) -> None:
    with unit_of_work(db_url) as session:
        tenant = make_tenant(session, "acme", require_evaluation=False)
        deploy_new(session, tenant, recommendation=None)
        deploy_new(session, tenant, recommendation=None)
        versions.promote(session, "acme", 1, 100)
        versions.promote(session, "acme", 2, 30)
    limits = {"subject_memo_bytes": 200_000, "name_memo_bytes": 50_000}
    router = Router(session_factory(db_url), staleness=3600, **limits)  # type: ignore[arg-type]
    fresh = Router(session_factory(db_url), staleness=3600)
    long_subjects = [f"{n:06d}-" + "s" * 2000 for n in range(1000)]  # 2 MB of subjects
    for subject in long_subjects:
        assert router.resolve("acme", subject) == fresh.snapshot("acme").place(subject)
        assert router.memo_bytes["subjects"] <= 200_000
    # Still sticky after the memo started over.
    assert [router.resolve("acme", s) for s in long_subjects[:50]] == [
        fresh.resolve("acme", s) for s in long_subjects[:50]
    ]
    for n in range(2000):  # unknown names, each 60 characters: ~430 KB of names
        with pytest.raises(TenantNotFound):
            router.resolve(f"nobody-{n:06d}-" + "x" * 46)
        assert router.memo_bytes["missing"] <= 50_000
    tenant_id = str(router.snapshot("acme").tenant_id).replace("-", "")
    reads = router.reads
    for n in range(600):  # spellings of one id, as many as its letters' cases allow
        name = "".join(c.upper() if (n >> i) & 1 else c for i, c in enumerate(tenant_id))
        router.resolve(name)
        assert router.memo_bytes["aliases"] <= 50_000
    assert router.reads == reads


def test_snapshots_are_bounded_by_bytes(db_url: str) -> None:
    models = _tenants(db_url, 6)
    router = Router(session_factory(db_url), staleness=3600, snapshot_memo_bytes=8_000)
    for slug, (m1, _) in models.items():
        assert router.resolve(slug) == m1
    assert 1 <= len(router._snapshots) <= 3
    assert router.memo_bytes["snapshots"] <= 8_000


class FlakySessions:
    """A session factory whose database can be switched off (every read raises)."""

    def __init__(self, real: sessionmaker[Session]) -> None:
        self.real, self.down, self.attempts = real, False, 0

    def __call__(self) -> Session:
        self.attempts += 1
        if self.down:
            raise OperationalError("SELECT …", {}, ConnectionRefusedError("database is down"))
        return self.real()


def test_last_known_split_served_while_the_database_fails(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    m1, m2 = _two_versions(db_url)
    _two_versions(db_url, "other")
    clock = Clock()
    sessions = FlakySessions(session_factory(db_url))
    router = Router(sessions, staleness=1.0, clock=clock, max_stale=120)  # type: ignore[arg-type]
    assert router.resolve("acme", "user-1") == m1
    assert router.resolve("other") is not None
    sessions.down = True
    caplog.set_level(logging.INFO, "ftdeploy.routing")
    attempts = sessions.attempts
    for _ in range(3000):  # 30 s of calls, every 10 ms
        clock.now += 0.01
        assert router.resolve("acme", "user-1") == m1
        assert router.resolve("other") is not None
    # Backed off: a try now and then (0.05 s doubling to 5 s), not one per call.
    assert sessions.attempts - attempts < 20
    with pytest.raises(RoutingUnavailable):
        router.resolve(str(uuid.uuid4()))  # never seen: nothing to serve
    served = [r for r in caplog.records if r.getMessage() == "routing.serving_last_known"]
    assert len(served) == 2  # once per tenant per outage
    assert sum(r.getMessage() == "routing.database_unavailable" for r in caplog.records) == 1

    # Back: the change made meanwhile is served within a backoff step.
    sessions.down = False
    with unit_of_work(db_url) as session:
        versions.promote(session, "acme", 2, 100)
    clock.now += 5.01
    assert router.resolve("acme", "user-1") == m2
    assert sum(r.getMessage() == "routing.database_recovered" for r in caplog.records) == 1

    # Past max_stale the last known split is refused, clearly.
    sessions.down = True
    clock.now += 121
    with pytest.raises(RoutingUnavailable, match="old"):
        router.resolve("acme")


class _Feed(ChangeFeed):
    def _run(self) -> None:
        self._stop.wait()


def test_subscription_merges_and_bounds_what_waits() -> None:
    feed = _Feed(1.0)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with Subscription(feed, max_pending=2) as changes:
        assert changes.get(timeout=0.01) is None
        feed._publish(ChangeBatch({a: 1}))
        feed._publish(ChangeBatch({a: 3, b: 2}))
        assert changes.get(timeout=1) == ChangeBatch({a: 3, b: 2})
        feed._publish(ChangeBatch({a: 4, b: 5}))
        feed._publish(ChangeBatch({c: 6}))  # a third tenant waiting: one resync instead
        assert changes.get(timeout=1) == ChangeBatch({}, resync=True)
    assert feed.closed


def _split(url: str, slug: str, canary: int) -> tuple[str, str]:
    m1, m2 = _two_versions(url, slug)
    with unit_of_work(url) as session:
        versions.promote(session, slug, 2, canary)
    return m1, m2


def test_placed_subjects_are_served_while_the_feed_vouches(db_url: str) -> None:
    m1, _ = _split(db_url, "acme", 30)
    clock, feed = Clock(), _Feed(1.0)
    router = Router(session_factory(db_url), staleness=1.0, clock=clock, feed=feed)
    feed.vouched_at = clock.now
    subjects = [f"user-{n}" for n in range(200)]
    picks = {s: router.resolve("acme", s) for s in subjects}
    assert len(router._placed) == 200  # placed in the Router's flat memo
    reads = router.reads
    for _ in range(5):  # the feed keeps vouching: no read, the same picks
        clock.now += 1.0
        feed.vouched_at = clock.now - 0.5
        assert {s: router.resolve("acme", s) for s in subjects} == picks
    assert router.reads == reads

    # A change the feed delivers: the next calls answer from the new split.
    with unit_of_work(db_url) as session:
        tenant_id = versions.find_tenant(session, "acme").id
    _promote_in_another_process(db_url, "acme", 2)  # v2 to 100%, with no own-write hook here
    feed._publish(ChangeBatch({tenant_id: 10**9}))
    fresh = Router(session_factory(db_url), staleness=3600)
    moved = {s: router.resolve("acme", s) for s in subjects}
    assert moved == {s: fresh.resolve("acme", s) for s in subjects} != picks
    assert router.reads == reads + 1

    # An own commit: seen by the very next call, before any notice of the feed.
    with unit_of_work(db_url) as session:
        versions.promote(session, "acme", 1, 100)
    assert {router.resolve("acme", s) for s in subjects} == {m1}

    # The feed stops vouching: within `staleness` the snapshot is read again, as without a feed.
    reads = router.reads
    clock.now += 1.01
    router.resolve("acme", subjects[0])
    assert router.reads == reads + 1


def test_placed_subjects_are_bounded_by_bytes_with_a_feed(db_url: str) -> None:
    _split(db_url, "acme", 30)
    clock, feed = Clock(), _Feed(1.0)
    router = Router(session_factory(db_url), staleness=1.0, clock=clock, feed=feed,
                    subject_memo_bytes=200_000)  # fmt: skip
    feed.vouched_at = clock.now
    fresh = Router(session_factory(db_url), staleness=3600)
    long_subjects = [f"{n:06d}-" + "s" * 2000 for n in range(1000)]  # 2 MB of subjects
    for subject in long_subjects:
        assert router.resolve("acme", subject) == fresh.snapshot("acme").place(subject)
        assert router.memo_bytes["subjects"] <= 200_000
    assert [router.resolve("acme", s) for s in long_subjects[:50]] == [
        fresh.resolve("acme", s) for s in long_subjects[:50]
    ]
    assert len(router._placed) * 2000 <= 200_000


def test_last_known_split_counts_its_age_from_the_last_vouch(db_url: str) -> None:
    _split(db_url, "other", 30)
    clock, feed = Clock(), _Feed(1.0)
    sessions = FlakySessions(session_factory(db_url))
    router = Router(sessions, staleness=1.0, clock=clock, feed=feed, max_stale=10)  # type: ignore[arg-type]
    feed.vouched_at = clock.now
    placed = router.resolve("other", "user-1")
    for _ in range(30):  # 30 s answered from the flat memo, the feed vouching all along
        clock.now += 1.0
        feed.vouched_at = clock.now
        assert router.resolve("other", "user-1") == placed
    sessions.down = True  # the database goes, and the feed with it
    clock.now += 5.0
    assert router.resolve("other", "user-1") == placed  # 5 s since the last vouch: served
    clock.now += 6.0
    with pytest.raises(RoutingUnavailable, match="old"):
        router.resolve("other", "user-1")
