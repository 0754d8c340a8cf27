"""The change stream's fan-out (`worker.http.changes.Announcer`) without a server: one tag
computation per change per process however many streams are open, each stream keeps what its key
may see, resyncs pass through, and a stalled stream is told to resync instead of growing."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

from registry.change_feed import ChangeBatch
from registry.errors import TenantNotFound
from registry.routing import Snapshot, build_snapshot
from worker.http import changes, documents

A, B, GONE = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


class FakeRouter:
    """Snapshots by tenant id, at the generation the test sets."""

    def __init__(self) -> None:
        self.generations = {A: 1, B: 1}
        self.reads: list[str] = []
        self.invalidated: list[Any] = []

    def snapshot(self, name: str) -> Snapshot:
        self.reads.append(name)
        tenant_id = uuid.UUID(name)
        if tenant_id not in self.generations:
            raise TenantNotFound(name)
        generation = self.generations[tenant_id]
        rows = [(uuid.uuid5(tenant_id, "v1"), 1, f"ft:model::{generation}", 100)]
        return build_snapshot(tenant_id, rows, 0.0, generation=generation, slug=f"t-{generation}")

    def invalidate(self, tenant_ids: Any = None) -> None:
        self.invalidated.append(tenant_ids)


class FakeFeed:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def subscribe(self, callback: Any) -> Any:
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def publish(self, batch: ChangeBatch) -> None:
        # From another thread, as the real feed does.
        thread = threading.Thread(target=lambda: [c(batch) for c in list(self.callbacks)])
        thread.start()
        thread.join()


def _etag(router: FakeRouter, tenant_id: uuid.UUID) -> str:
    snapshot = router.snapshot(str(tenant_id))
    return str(documents.for_snapshot(snapshot, snapshot.slug)["etag"])


def _announcer() -> tuple[changes.Announcer, FakeRouter, FakeFeed]:
    router, feed = FakeRouter(), FakeFeed()
    announcer = changes.Announcer(router, lambda: feed)  # type: ignore[arg-type, return-value]
    return announcer, router, feed


def test_one_computation_per_change_fanned_out_to_the_streams_that_may_see_it() -> None:
    announcer, router, feed = _announcer()

    async def scenario() -> None:
        everything = [await announcer.open(lambda _: True) for _ in range(50)]
        only_b = await announcer.open(lambda t: t == B)
        router.generations[A] = 2
        feed.publish(ChangeBatch({A: 2, GONE: 3}))
        for stream in everything:
            got = await stream.next(2)
            assert got is not None and not got.resync
            assert dict(got.etags) == {A: _etag(router, A)}  # GONE is skipped
        assert await only_b.next(0.05) is None
        assert announcer.computed == 2  # A and GONE, once for 51 streams
        for stream in [*everything, only_b]:
            stream.close()
        assert feed.callbacks == []  # the last stream gone: unsubscribed

    asyncio.run(scenario())


def test_a_router_behind_the_feed_is_made_to_reread() -> None:
    announcer, router, feed = _announcer()

    async def scenario() -> None:
        stream = await announcer.open(lambda _: True)
        feed.publish(ChangeBatch({B: 5}))  # the router still holds generation 1
        got = await stream.next(2)
        assert got is not None and B in got.etags
        assert router.invalidated == [{B: 5}]
        stream.close()

    asyncio.run(scenario())


def test_resync_passes_through_and_a_stalled_stream_resyncs(monkeypatch: Any) -> None:
    monkeypatch.setattr(changes, "PENDING_LIMIT", 1)
    announcer, _, feed = _announcer()

    async def scenario() -> None:
        stream = await announcer.open(lambda _: True)
        feed.publish(ChangeBatch(resync=True))
        got = await stream.next(2)
        assert got is not None and got.resync and not got.etags
        feed.publish(ChangeBatch({A: 1}))
        await asyncio.sleep(0.1)  # not read yet: pending on the stream
        feed.publish(ChangeBatch({B: 1}))
        await asyncio.sleep(0.1)
        got = await stream.next(2)
        assert got is not None and got.resync  # two pending tenants > the limit of one
        stream.close()

    asyncio.run(scenario())
