"""Where a change feed learns of changes: `PostgresFeed` (LISTEN/NOTIFY with heartbeats) and
`GenerationPoller` (SQLite's generation table, polled). See `registry.change_feed` for how they
work and what a subscriber is guaranteed; `process_feed` there picks one for a database.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from registry.change_feed import (
    APPLICATION_NAME,
    CHANNEL,
    POLL_ROWS_LIMIT,
    ChangeBatch,
    ChangeFeed,
)
from registry.models import RoutingGeneration

log = logging.getLogger("ftdeploy.routing")

_beats = itertools.count()


class PostgresFeed(ChangeFeed):
    """LISTEN/NOTIFY on one dedicated connection, with heartbeats (see the module docstring)."""

    def __init__(
        self,
        url: str,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        beat_timeout: float | None = None,
        connect_timeout: int = 5,
    ) -> None:
        super().__init__(interval, clock)
        self._conninfo = (
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self.beat_timeout = beat_timeout or max(2.0, 4 * self.interval)
        self._connect_timeout = connect_timeout
        self._beat_channel = f"{CHANNEL}_beat_{os.getpid()}_{next(_beats)}"
        self.backend_pid: int | None = None  # of the listening connection, for tests

    def _run(self) -> None:
        with psycopg.connect(
            self._conninfo, autocommit=True, application_name=APPLICATION_NAME,
            connect_timeout=self._connect_timeout,
        ) as conn:  # fmt: skip
            listening_from = self._clock()
            conn.execute(f"LISTEN {CHANNEL}")
            conn.execute(f"LISTEN {self._beat_channel}")
            self.queries += 3
            self.backend_pid = conn.info.backend_pid
            # Changes committed before LISTEN took effect were never going to reach us.
            self._publish(ChangeBatch(resync=True))
            self.vouched_at = max(self.vouched_at, listening_from)
            self._up()
            self._listen(conn)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        pending: dict[int, float] = {}  # heartbeat number -> when it was sent
        last_beat = time.monotonic()
        number = 0
        while not self._stop.is_set():
            number += 1
            pending[number] = self._clock()
            conn.execute("SELECT pg_notify(%s, %s)", (self._beat_channel, str(number)))
            self.queries += 1
            deadline = time.monotonic() + self.interval
            while not self._stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
                for notify in conn.notifies(timeout=remaining):
                    if notify.channel == self._beat_channel:
                        got = int(notify.payload)
                        sent = pending.get(got)
                        for old in [n for n in pending if n <= got]:
                            del pending[old]
                        if sent is not None:
                            # Published everything committed before the beat was sent.
                            self.vouched_at = max(self.vouched_at, sent)
                            last_beat = time.monotonic()
                    else:
                        self._publish(_parse(notify.payload))
            if time.monotonic() - last_beat > self.beat_timeout:
                raise TimeoutError(f"no heartbeat back within {self.beat_timeout:g} s")


def _parse(payload: str) -> ChangeBatch:
    try:
        tenant, generation = payload.split(" ")
        return ChangeBatch({uuid.UUID(tenant): int(generation)})
    except ValueError:  # not ours: safer to revalidate everything than to ignore it
        fields = {"payload": payload[:80]}
        log.warning("routing.feed_bad_payload", extra={"ftdeploy_fields": fields})
        return ChangeBatch(resync=True)


class GenerationPoller(ChangeFeed):
    """SQLite: the generation table, polled once per interval (see the module docstring)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(interval, clock)
        self._sessions = sessions
        self._seen: int | None = None  # highest generation published

    def _run(self) -> None:
        while not self._stop.is_set():
            began = self._clock()
            rows = self._poll()
            highest = rows.pop()[1]
            if self._seen is None or highest < self._seen or len(rows) > POLL_ROWS_LIMIT:
                # Start, a database whose history went back (a restore), or too much at once.
                self._publish(ChangeBatch(resync=True))
            elif rows:
                self._publish(ChangeBatch({tenant: gen for tenant, gen in rows}))
            self._seen = highest
            self.vouched_at = max(self.vouched_at, began)
            if not self.connected:
                self._up()
            self._stop.wait(self.interval)

    def _poll(self) -> list[tuple[uuid.UUID, int]]:
        """Rows above the highest generation seen (at most POLL_ROWS_LIMIT + 1), then the
        maximum as a last row (None, max): one round trip."""
        seen = -1 if self._seen is None else self._seen
        table = RoutingGeneration
        changed = (
            select(table.tenant_id, table.generation)
            .where(table.generation > seen)
            .order_by(table.generation)
            .limit(POLL_ROWS_LIMIT + 1 if self._seen is not None else 0)
        )
        with self._sessions() as session:
            rows = [(r[0], int(r[1])) for r in session.execute(changed)]
            highest = session.scalar(select(func.coalesce(func.max(table.generation), 0)))
        self.queries += 1
        return [*rows, (uuid.UUID(int=0), int(highest or 0))]
