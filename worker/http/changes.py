"""The change stream's source: the process's routing change feed, fanned out to the open streams.

One `Announcer` per app subscribes to the change feed (`registry.routing.change_feed()`: the one
feed per process and database that also keeps the Router fresh) while at least one stream is
open. For each batch of changed tenants it computes, once for the process, each tenant's new
routing document ETag from the Router's current snapshot, then hands `(tenant id, etag)` to
every open stream, which keeps what its key may see. So a change costs one read per process
(the Router's re-read of that tenant, which the next request would have made anyway), however
many streams are open. A resync batch ("changes may have been missed") is passed on as such: the
streams tell their clients to revalidate every document they hold.

The feed's thread only hands batches to the event loop; the reads run in the loop's thread pool,
never on the loop or on the feed's thread. Guarantee, for a stream: every change committed after
`Announcer.open()` returned is announced on it (or covered by a resync), in commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from registry.change_feed import ChangeBatch, ChangeFeed
from registry.errors import FtdeployError
from registry.routing import Router
from worker.http import documents
from worker.logs import event

log = logging.getLogger("ftdeploy.http")
# Tenants waiting to be sent on one stream before it is told to resync instead.
PENDING_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Changes:
    """Tenants whose document changed (id -> the new document's ETag), or a resync."""

    etags: Mapping[uuid.UUID, str] = field(default_factory=dict)
    resync: bool = False


class Stream:
    """One open stream's pending changes, merged (a tenant changed twice is sent once, with its
    newest tag) and bounded (past `PENDING_LIMIT` tenants, one resync). Lives on the loop."""

    def __init__(self, announcer: Announcer, sees: Callable[[uuid.UUID], bool]) -> None:
        self._announcer = announcer
        self._sees = sees
        self._etags: dict[uuid.UUID, str] = {}
        self._resync = False
        self._ready = asyncio.Event()

    def put(self, changes: Changes) -> None:
        if changes.resync:
            self._resync, self._etags = True, {}
        elif not self._resync:
            self._etags.update((t, e) for t, e in changes.etags.items() if self._sees(t))
            if len(self._etags) > PENDING_LIMIT:  # a stalled client: it revalidates instead
                self._resync, self._etags = True, {}
        if self._resync or self._etags:
            self._ready.set()

    async def next(self, timeout: float) -> Changes | None:
        """What changed since the last call, or None when nothing did within `timeout` s."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return None
        changes = Changes(self._etags, self._resync)
        self._etags, self._resync = {}, False
        self._ready.clear()
        return changes

    def close(self) -> None:
        self._announcer.closed(self)


class Announcer:
    """The app's fan-out of the change feed to its streams (see the module docstring)."""

    def __init__(self, router: Router, feed: Callable[[], ChangeFeed]) -> None:
        self._router = router
        self._feed = feed
        self._streams: set[Stream] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._pending: dict[uuid.UUID, int] = {}  # tenant id -> generation, not yet announced
        self._resync = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.computed = 0  # tenants whose tag was computed, for tests

    async def open(self, sees: Callable[[uuid.UUID], bool]) -> Stream:
        """A stream of the changes of the tenants `sees` admits, from now on."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first stream, or an app reused on another loop
            self._stop()
            self._loop, self._wake = loop, asyncio.Event()
        stream = Stream(self, sees)
        self._streams.add(stream)
        if self._unsubscribe is None:
            feed = await run_in_threadpool(self._feed)
            if self._unsubscribe is None and stream in self._streams:  # no other open won
                self._unsubscribe = feed.subscribe(self._on_batch)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._pump())
        return stream

    def closed(self, stream: Stream) -> None:
        self._streams.discard(stream)
        if not self._streams:
            self._stop()

    def _stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._pending, self._resync = {}, False
        if self._wake is not None:
            self._wake.set()  # the pump sees no stream and ends

    # -- the feed's thread hands over; the loop merges ------------------------------------------

    def _on_batch(self, batch: ChangeBatch) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the app is gone
            loop.call_soon_threadsafe(self._merge, batch)

    def _merge(self, batch: ChangeBatch) -> None:
        if not self._streams or self._wake is None:
            return
        if batch.resync:
            self._resync, self._pending = True, {}
        elif not self._resync:
            for tenant, generation in batch.tenants.items():
                self._pending[tenant] = max(generation, self._pending.get(tenant, 0))
        self._wake.set()

    async def _pump(self) -> None:
        wake = self._wake
        assert wake is not None
        while self._streams:
            await wake.wait()
            wake.clear()
            pending, resync = self._pending, self._resync
            self._pending, self._resync = {}, False
            if resync:
                changes = Changes(resync=True)
            elif pending:
                changes = Changes(await run_in_threadpool(self._etags, pending))
            else:
                continue
            for stream in list(self._streams):
                stream.put(changes)

    def _etags(self, tenants: Mapping[uuid.UUID, int]) -> dict[uuid.UUID, str]:
        """Each tenant's current document tag, from the Router (in a worker thread)."""
        etags: dict[uuid.UUID, str] = {}
        for tenant_id, generation in sorted(tenants.items()):
            name = str(tenant_id)
            try:
                snapshot = self._router.snapshot(name)
                if snapshot.generation < generation:
                    # The Router has not heard of this change yet (it hears first, as the
                    # earlier subscriber, unless it lost its feed): make it re-read.
                    self._router.invalidate({tenant_id: generation})
                    snapshot = self._router.snapshot(name)
                etags[tenant_id] = str(documents.for_snapshot(snapshot, snapshot.slug)["etag"])
            except FtdeployError as error:  # gone, or unreadable now: the feed resyncs later
                event(log, "stream.tenant_skipped", logging.INFO, tenant=name,
                      error=type(error).__name__)  # fmt: skip
        self.computed += len(tenants)
        return etags
