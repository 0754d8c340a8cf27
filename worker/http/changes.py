"""Which tenants' splits changed: the change stream's source, behind a small interface.

`ChangeFeed.subscribe()` registers a subscriber and returns once it is registered: every change
committed after that is delivered to it, as a set of tenant ids, by `Subscription.next()`. The
feed here polls the audit trail (`ai_traffic_events`, written in the same transaction as every
traffic change) every `FTDEPLOY_STREAM_POLL_SECONDS`, one small query per process however many
subscribers there are, only while there is at least one. It is meant to be replaced by the
process's change feed (PostgreSQL LISTEN/NOTIFY) behind the same two methods.

Event ids are assigned when a transaction writes them, not when it commits, so a change may
appear below one already seen: the poll re-reads a window of the last few polls' ids and
remembers which it has delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from registry.models import TrafficEvent
from worker.logs import event

log = logging.getLogger("ftdeploy.http")
WINDOW_POLLS = 10  # how far back (in polls) a late-committing change is still found
QUEUE_LIMIT = 1000


class Subscription(Protocol):
    async def next(self, timeout: float) -> frozenset[uuid.UUID] | None:
        """The tenants changed since the last call, or None after `timeout` seconds."""

    def close(self) -> None: ...


class ChangeFeed(Protocol):
    async def subscribe(self) -> Subscription: ...


class _Queue:
    def __init__(self, feed: PollingFeed) -> None:
        self._feed = feed
        self.queue: asyncio.Queue[frozenset[uuid.UUID]] = asyncio.Queue(QUEUE_LIMIT)

    async def next(self, timeout: float) -> frozenset[uuid.UUID] | None:
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
        merged = set(first)
        while not self.queue.empty():
            merged |= self.queue.get_nowait()
        return frozenset(merged)

    def put(self, changed: frozenset[uuid.UUID]) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a stalled client: it gets a later change
            self.queue.put_nowait(changed)

    def close(self) -> None:
        self._feed.unsubscribe(self)


class PollingFeed:
    """A ChangeFeed that polls the audit trail. One per process (per event loop)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        interval: float,
        on_change: Callable[[frozenset[uuid.UUID]], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._interval = interval
        self._on_change = on_change
        self._subscribers: set[_Queue] = set()
        self._task: asyncio.Task[None] | None = None
        self._floors: deque[int] = deque(maxlen=WINDOW_POLLS)
        self._seen: set[int] = set()
        self.polls = 0

    async def subscribe(self) -> Subscription:
        subscription = _Queue(self)
        if self._task is None or self._task.done():
            # The baseline is read before the subscriber counts as registered.
            top = await run_in_threadpool(self._top)
            self._floors.clear()
            self._floors.append(top)
            self._seen.clear()
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: _Queue) -> None:
        self._subscribers.discard(subscription)

    async def _run(self) -> None:
        while self._subscribers:
            await asyncio.sleep(self._interval)
            try:
                changed = await run_in_threadpool(self._poll)
            except SQLAlchemyError as error:
                event(log, "stream.poll_failed", logging.WARNING, error=type(error).__name__)
                continue
            if not changed:
                continue
            if self._on_change is not None:
                self._on_change(changed)
            for subscriber in list(self._subscribers):
                subscriber.put(changed)
        self._task = None

    def _top(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.max(TrafficEvent.id))) or 0)

    def _poll(self) -> frozenset[uuid.UUID]:
        floor = self._floors[0]
        with self._sessions() as session:
            rows = session.execute(
                select(TrafficEvent.id, TrafficEvent.tenant_id).where(TrafficEvent.id > floor)
            ).all()
        self.polls += 1
        fresh = [(i, t) for i, t in rows if i not in self._seen]
        self._seen = {i for i, _ in rows}
        self._floors.append(max([floor, *(i for i, _ in rows)]))
        # Forget ids that fell out of the window.
        self._seen = {i for i in self._seen if i > self._floors[0]}
        return frozenset(t for _, t in fresh)
