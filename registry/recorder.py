"""`OutcomeRecorder`: the serving app's in-process door for outcomes.

`record()` validates an outcome, resolves its version (cached) and adds it to in-memory sums per
(tenant, version, bucket); flushes write those sums with batched upserts
(`registry.outcomes.upsert_counters`). One flush writes one row per bucket touched, however many
outcomes it holds: that, not the request rate, is what the database sees.

Usage in a serving app::

    recorder = OutcomeRecorder()          # the configured database and bucket width
    recorder.record("acme", model_id, success=True, score=0.9, latency_ms=412)
    ...
    recorder.close()                      # at shutdown: flushes what is left
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from registry.errors import FtdeployError, InvalidInput
from registry.models import utcnow
from registry.outcomes import (
    Ids,
    Key,
    Outcome,
    Refusal,
    StoreResult,
    Sums,
    VersionResolver,
    bucket_start,
    field_of,
    parse_outcome,
    upsert_counters,
    validate_outcome,
)

log = logging.getLogger("ftdeploy.outcomes")


class OutcomeObserver(Protocol):
    """Told about every accepted and refused outcome (the worker feeds Prometheus with it)."""

    def recorded(self, count: int) -> None: ...

    def refused(self, field: str) -> None: ...


@dataclass(frozen=True)
class RecorderStats:
    recorded: int  # outcomes accepted (sum of counts)
    refused: dict[str, int]  # refusals by field
    flushes: int  # flushes that wrote something
    rows_written: int  # (version, bucket) rows upserted
    pending: int  # buckets waiting for the next flush


class OutcomeRecorder:
    """The in-process door: `record()` validates and adds to in-memory sums; a flush upserts them.

    Thread-safe. `record()` costs a validation, a cache lookup (a query on the first sight of a
    (tenant, model)) and a dict update under a lock; it never writes to the database. Flushes
    happen in a background thread every `flush_seconds`, when `max_pending` records have
    accumulated, on `flush()`, and on `close()` (also on leaving a `with` block). Counts whose
    flush fails stay pending for the next one. After a fork the child starts empty.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session] | None = None,
        *,
        bucket_seconds: int | None = None,
        max_pending: int = 10_000,
        flush_seconds: float = 1.0,
        background: bool = True,
        observer: OutcomeObserver | None = None,
        resolver: VersionResolver | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if sessions is None or bucket_seconds is None:
            from registry.db import session_factory
            from registry.settings import get_settings

            sessions = sessions or session_factory()
            bucket_seconds = bucket_seconds or get_settings().outcome_bucket_seconds
        if not 1 <= bucket_seconds <= 3600:
            raise InvalidInput("bucket_seconds", f"{bucket_seconds} is outside 1..3600")
        self._sessions = sessions
        self._bucket = bucket_seconds
        self._max_pending = max(1, max_pending)
        self._flush_seconds = flush_seconds
        self._background = background
        self._observer = observer
        self._resolver = resolver or VersionResolver()
        self._clock = clock
        self._lock = threading.Lock()  # guards the pending sums and the stats
        self._flush_lock = threading.Lock()  # one flush at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._pending: dict[Key, Sums] = {}
        self._pending_records = 0
        self._recorded = 0
        self._refused: Counter[str] = Counter()
        self._flushes = 0
        self._rows = 0
        self._thread: threading.Thread | None = None

    def _forget_parent(self) -> None:
        # A forked child must not flush its parent's pending counts a second time (lock held).
        if self._pid != os.getpid():
            self._reset()

    def record(
        self,
        tenant: str | uuid.UUID,
        model: str | int,
        success: bool,
        *,
        score: float | None = None,
        latency_ms: float | None = None,
        count: int = 1,
        at: datetime | None = None,
    ) -> None:
        """Accept one outcome (or `count` alike ones). Raises InvalidInput / TenantNotFound with
        the reason when refused; a refusal is counted and nothing of it is kept."""
        now = self._clock()
        try:
            outcome = validate_outcome(
                tenant, model, success, score, latency_ms, count, at, now=now
            )
            ids = self._resolve(outcome)
        except FtdeployError as error:
            self._count_refusal(field_of(error))
            raise
        self._add(ids, outcome, now)

    def record_many(self, records: Iterable[object]) -> StoreResult:
        """Accept a batch of mappings (the task's format); refusals are listed, not raised."""
        result = StoreResult()
        now = self._clock()
        for index, record in enumerate(records):
            try:
                outcome = parse_outcome(record, now=now)
                ids = self._resolve(outcome)
            except FtdeployError as error:
                self._count_refusal(field_of(error))
                result.refused.append(Refusal(index, field_of(error), str(error)))
                continue
            self._add(ids, outcome, now)
            result.recorded += outcome.count
        return result

    def _resolve(self, outcome: Outcome) -> Ids:
        ids = self._resolver.cached(outcome.tenant, outcome.model)
        if ids is not None:
            return ids
        with self._sessions() as session:
            return self._resolver.load(session, outcome.tenant, outcome.model)

    def _add(self, ids: Ids, outcome: Outcome, now: datetime) -> None:
        key = (ids[0], ids[1], bucket_start(outcome.at or now, self._bucket))
        with self._lock:
            self._forget_parent()
            sums = self._pending.get(key)
            if sums is None:
                sums = self._pending[key] = Sums()
            sums.add(outcome)
            self._pending_records += 1
            self._recorded += outcome.count
            full = self._pending_records >= self._max_pending
            start = self._background and self._thread is None and not self._stop.is_set()
            if start:
                self._thread = threading.Thread(
                    target=self._run, name="ftdeploy-outcomes", daemon=True
                )
        if start and self._thread is not None:
            self._thread.start()
        if self._observer is not None:
            self._observer.recorded(outcome.count)
        if full:
            if self._background and not self._stop.is_set():
                self._wake.set()
            else:
                self.flush()

    def _count_refusal(self, field_name: str) -> None:
        with self._lock:
            self._refused[field_name] += 1
        if self._observer is not None:
            self._observer.refused(field_name)

    def flush(self) -> int:
        """Write everything pending now; returns the number of (version, bucket) rows written.

        Raises the database's error if the write fails; the counts then stay pending. Rows whose
        version or tenant was deleted meanwhile are dropped (logged), the others written.
        """
        with self._flush_lock:
            with self._lock:
                self._forget_parent()
                batch, self._pending = self._pending, {}
                self._pending_records = 0
            if not batch:
                return 0
            try:
                written = self._write(batch)
            except Exception:
                with self._lock:
                    for key, sums in batch.items():
                        self._pending.setdefault(key, Sums()).merge(sums)
                raise
            with self._lock:
                self._flushes += 1
                self._rows += written
            return written

    def _write(self, batch: dict[Key, Sums]) -> int:
        try:
            with self._sessions() as session, session.begin():
                upsert_counters(session, batch)
            return len(batch)
        except IntegrityError:
            pass
        # A version (or tenant) deleted since it was resolved: write row by row, drop those.
        written = 0
        for key, sums in batch.items():
            try:
                with self._sessions() as session, session.begin():
                    upsert_counters(session, {key: sums})
                written += 1
            except IntegrityError:
                log.warning(
                    "outcomes.dropped",
                    extra={
                        "ftdeploy_fields": {"version_id": str(key[1]), "requests": sums.requests}
                    },
                )
        return written

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception as error:  # kept pending; the next flush retries
                log.warning(
                    "outcomes.flush_failed",
                    extra={"ftdeploy_fields": {"error": type(error).__name__}},
                )

    @property
    def stats(self) -> RecorderStats:
        with self._lock:
            return RecorderStats(
                self._recorded, dict(self._refused), self._flushes, self._rows, len(self._pending)
            )

    def close(self) -> None:
        """Stop the background thread and flush what is left (raises if that flush fails)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=30)
        self.flush()

    def __enter__(self) -> OutcomeRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
