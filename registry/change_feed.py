"""The routing change feed: which tenants' splits changed, learned once per process.

Every change of a tenant's traffic goes through `splits.check_and_audit`, which calls
`note_change` in the change's own transaction, under the tenant's lock. That bumps the tenant's
row in `ai_routing_generations` and, on PostgreSQL, queues `NOTIFY ftdeploy_routing, '<tenant
id> <generation>'`. Both take effect with the commit and vanish with a rollback (a savepoint's
rollback discards its notifications too).

A process learns about changes from one feed per database, shared by every subscriber (the two
kinds are in `registry.change_sources`):

- **PostgreSQL** (`PostgresFeed`): one dedicated psycopg connection in a background thread
  LISTENs on the channel. PostgreSQL delivers notifications after the commit, in commit order.
  Every `interval` the thread also notifies a channel of its own (a heartbeat) on that
  connection: when the heartbeat comes back, every change committed before it was sent has
  been delivered, so `vouched_at` moves to the time it was sent. A connection that drops, or a
  heartbeat that does not return within `beat_timeout`, ends the listening; the thread
  reconnects with backoff and, once LISTEN is in force again, publishes a *resync* batch:
  whatever changed while nobody listened is treated as changed.
- **SQLite** (`GenerationPoller`): writers are serialized, so generations grow in commit order
  across tenants. A background thread asks every `interval` for the rows above the highest
  generation it has seen (one indexed query that also returns the maximum), and publishes the
  tenants found; `vouched_at` is when the query began.

Guarantees, for a subscriber:

- A change committed at time C is published before `vouched_at` passes C; `vouched_at` never
  goes back. While the feed is down it stands still: a reader that needs changes up to some
  moment (the Router: up to "now - staleness") falls back to reading for itself.
- Nothing is silently lost: a gap (reconnect, start, a subscriber's queue overflowing, a
  database whose generations went back) is published as a batch with `resync=True`, meaning
  "anything may have changed: revalidate what you hold".
- The cost does not grow with the number of tenants: PostgreSQL, one heartbeat per `interval`
  plus one message per change; SQLite, one query per `interval`.

Subscribing (the routing cache, the HTTP API's change stream):

    unsubscribe = feed.subscribe(callback)   # callback(ChangeBatch) on the feed's thread
    with feed.subscription() as changes:     # or a thread-safe queue of one's own
        batch = changes.get(timeout=15)      # ChangeBatch, or None after the timeout

`process_feed(sessions, interval)` gives the process's feed for a database (one per process,
started at the first subscription, stopped when the last subscriber leaves).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import TracebackType
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Executable,
    String,
    Uuid,
    bindparam,
    cast,
    func,
    select,
    true,
)
from sqlalchemy.orm import Session, sessionmaker

from registry import clock, dialect
from registry.models import RoutingGeneration, UTCDateTime

log = logging.getLogger("ftdeploy.routing")

CHANNEL = "ftdeploy_routing"
APPLICATION_NAME = "ftdeploy-routing-feed"
RETRY_MIN_SECONDS = 0.05
RETRY_MAX_SECONDS = 5.0
# SQLite: past this many tenants changed between two polls, publish one resync instead.
POLL_ROWS_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """Tenants whose split changed (id -> generation after the change), or a resync."""

    tenants: Mapping[uuid.UUID, int] = field(default_factory=dict)
    # True: changes may have been missed; treat every tenant as changed.
    resync: bool = False


Callback = Callable[[ChangeBatch], None]


def note_change(session: Session, tenant_id: uuid.UUID) -> int:
    """Record in this transaction that the tenant's split changed; returns its new generation.

    Call with the tenant locked (as `splits.check_and_audit` does): its generation then grows
    strictly from one change to the next. The generation is one more than the highest of any
    tenant, so on SQLite (one writer at a time) it also grows in commit order. On PostgreSQL
    a notification is queued, delivered to every listener when the transaction commits.
    One statement: the row is upserted from the highest generation (and, on PostgreSQL, the
    notification queued by the same statement).
    """
    statement = _bump_statement(session.get_bind().dialect.name)
    params = {"tenant_id": tenant_id, "changed_at": clock.now(), "payload_prefix": f"{tenant_id} "}
    return int(session.execute(statement, params).scalar_one())


@lru_cache(maxsize=4)
def bump(dialect_name: str) -> Any:
    """The generation bump as an insert (… ON CONFLICT DO UPDATE … RETURNING generation): the
    tenant's row upserted from the highest generation. Params `tenant_id` and `changed_at`.
    Built once per database: building it costs more than running it, and a prebuilt
    statement's cache key is memoized."""
    generations = RoutingGeneration.__table__
    highest = select(
        bindparam("tenant_id", type_=Uuid()),
        func.coalesce(func.max(generations.c.generation), 0) + 1,
        bindparam("changed_at", type_=UTCDateTime()),
    ).where(true())  # SQLite: without a WHERE, "ON CONFLICT" would parse as a join's ON
    insert = dialect.insert_for(dialect_name, generations)
    return (
        insert.from_select(["tenant_id", "generation", "changed_at"], highest)
        .on_conflict_do_update(
            index_elements=["tenant_id"],
            set_={
                "generation": insert.excluded.generation,
                "changed_at": insert.excluded.changed_at,
            },
        )
        .returning(generations.c.generation)
    )


def notification(bumped: CTE) -> ColumnElement[Any]:
    """PostgreSQL: the notification of the generation `bumped` (a CTE of `bump`) returns,
    queued when it is selected. Param `payload_prefix`: the tenant's id and a space."""
    payload = bindparam("payload_prefix", type_=String()) + cast(bumped.c.generation, String)
    return func.pg_notify(CHANNEL, payload)


@lru_cache(maxsize=4)
def _bump_statement(dialect_name: str) -> Executable:
    if dialect_name != "postgresql":
        return bump(dialect_name)
    bumped = bump(dialect_name).cte("bumped")
    return select(bumped.c.generation, notification(bumped))


class ChangeFeed:
    """What both feeds share: subscribers, the background thread, `vouched_at`."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.interval = float(interval)
        self._clock = clock
        self._subscribers: list[Callback] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_close: Callable[[ChangeFeed], None] | None = None
        # Every change committed before this moment (of `clock`) has been published.
        self.vouched_at = -math.inf
        self.connected = False
        self._down = False  # an outage was logged and has not ended
        self._was_up = False
        self.queries = 0  # round trips to the database, for tests and benchmarks

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call `callback(batch)` for every batch from now on; returns the unsubscribe function.

        Callbacks run on the feed's thread, one batch at a time, in commit order: keep them
        short. The first batch after (re)connecting is a resync.
        """
        with self._lock:
            self._subscribers.append(callback)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run_guarded, name=f"ftdeploy-{type(self).__name__}", daemon=True
                )
                self._thread.start()

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
                last = not self._subscribers
            if last:
                self.close()

        return unsubscribe

    def subscription(self, max_pending: int = 10_000) -> Subscription:
        """A queue of this feed's batches of one's own (see `Subscription`)."""
        return Subscription(self, max_pending)

    def close(self) -> None:
        """Stop the thread (it ends within one interval); a closed feed publishes nothing."""
        self._stop.set()
        self.connected = False
        if self._on_close is not None:
            self._on_close(self)

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def _publish(self, batch: ChangeBatch) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(batch)
            except Exception:  # one subscriber's bug must not blind the others
                log.exception("routing.feed_subscriber_failed")

    def _run_guarded(self) -> None:
        backoff = RETRY_MIN_SECONDS
        while not self._stop.is_set():
            self._was_up = False
            try:
                self._run()  # returns when stopped; raises when the database fails
                break
            except Exception as error:
                self.connected = False
                if self._stop.is_set():  # closed meanwhile: whatever failed no longer matters
                    break
                if self._was_up:  # a new outage: start the backoff over
                    backoff = RETRY_MIN_SECONDS
                if not self._down:
                    self._down = True
                    fields = {"feed": type(self).__name__, "error": type(error).__name__,
                              "detail": str(error).strip()[:200]}  # fmt: skip
                    log.warning("routing.feed_down", extra={"ftdeploy_fields": fields})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RETRY_MAX_SECONDS)
        self.connected = False

    def _up(self) -> None:
        """Called by a feed once it is connected (again): logs a recovery once."""
        self.connected = self._was_up = True
        if self._down:
            self._down = False
            log.info("routing.feed_up", extra={"ftdeploy_fields": {"feed": type(self).__name__}})

    def _run(self) -> None:
        raise NotImplementedError


class Subscription:
    """A subscriber's own queue: thread-safe, bounded, merging.

    Batches waiting to be read are merged (a tenant changed twice is one entry, with its newest
    generation); past `max_pending` tenants, or after a resync, what waits is one resync batch.
    So memory stays bounded and nothing is lost: a slow reader is told to revalidate instead.
    """

    def __init__(self, feed: ChangeFeed, max_pending: int) -> None:
        self._max_pending = max_pending
        self._cond = threading.Condition()
        self._tenants: dict[uuid.UUID, int] = {}
        self._resync = False
        self._ready = False
        self._closed = False
        self._unsubscribe = feed.subscribe(self._put)

    def _put(self, batch: ChangeBatch) -> None:
        with self._cond:
            if not self._resync:
                for tenant, generation in batch.tenants.items():
                    self._tenants[tenant] = max(generation, self._tenants.get(tenant, 0))
                if batch.resync or len(self._tenants) > self._max_pending:
                    self._resync, self._tenants = True, {}
            self._ready = True
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> ChangeBatch | None:
        """Everything published since the last get, merged; None if nothing came within
        `timeout` seconds (None: wait for ever) or the subscription is closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready or self._closed, timeout):
                return None
            if not self._ready:
                return None
            batch = ChangeBatch(self._tenants, self._resync)
            self._tenants, self._resync, self._ready = {}, False, False
            return batch

    def __iter__(self) -> Iterator[ChangeBatch]:
        while (batch := self.get()) is not None:
            yield batch

    def close(self) -> None:
        self._unsubscribe()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()


# -- one feed per process and database -----------------------------------------------------------

_feeds: dict[tuple[str, float], ChangeFeed] = {}
_feeds_lock = threading.Lock()


def process_feed(sessions: sessionmaker[Session], interval: float) -> ChangeFeed:
    """This process's feed for the database of `sessions` (built at the first call; a forked
    child gets its own, and a feed whose last subscriber left is replaced)."""
    bind = sessions.kw["bind"]
    url = bind.url.render_as_string(hide_password=False)
    key = (f"{os.getpid()}:{url}", float(interval))
    from registry.change_sources import GenerationPoller, PostgresFeed  # they build on ChangeFeed

    with _feeds_lock:
        feed = _feeds.get(key)
        if feed is None or feed.closed:
            if bind.dialect.name == "postgresql":
                feed = PostgresFeed(url, interval)
            else:
                feed = GenerationPoller(sessions, interval)
            feed._on_close = lambda closed: _forget(key, closed)
            _feeds[key] = feed
    return feed


def _forget(key: tuple[str, float], feed: ChangeFeed) -> None:
    with _feeds_lock:
        if _feeds.get(key) is feed:
            del _feeds[key]
