"""`OutcomeRecorder`: the serving app's in-process door for outcomes.

`record()` validates an outcome, resolves its version (cached) and adds it to in-memory sums per
(tenant, version, bucket); flushes write those sums with batched upserts
(`registry.canary.outcomes.upsert_counters`). One flush writes one row per bucket touched,
however many outcomes it holds: that, not the request rate, is what the database sees.

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
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from registry.canary.outcomes import (
    MAX_COUNT,
    MAX_LATENCY_MS,
    Ids,
    Key,
    Outcome,
    Refusal,
    StoreResult,
    Sums,
    VersionResolver,
    bucket_of,
    bucket_time,
    field_of,
    parse_outcome,
    upsert_counters,
    validate_outcome,
)
from registry.errors import FtdeployError, InvalidInput

log = logging.getLogger("ftdeploy.outcomes")

KNOWN_LIMIT = 100_000  # (tenant, model) pairs, as callers pass them, kept for the fast path
Pending = dict[tuple[int, int], Sums]  # (slot of the ids, bucket start in epoch seconds)


def _plain(success: object, score: object, latency_ms: object, count: object) -> bool:
    """True when the values are certainly valid (exact types, in range, so not NaN); anything
    else takes the full validation, which says what is wrong."""
    return (
        type(success) is bool
        and type(count) is int
        and 1 <= count <= MAX_COUNT
        and (score is None or (type(score) in (float, int) and 0.0 <= score <= 1.0))  # type: ignore[operator]
        and (
            latency_ms is None
            or (type(latency_ms) in (float, int) and 0.0 <= latency_ms <= MAX_LATENCY_MS)  # type: ignore[operator]
        )
    )


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

    Thread-safe. `record()` never writes to the database: the first outcome of a (tenant, model)
    is fully validated and resolved (one query), later ones with plain values only have their
    values checked, then a dict update under a lock. Flushes happen in a background thread every
    `flush_seconds`, when `max_pending` records have accumulated, on `flush()`, and on `close()`
    (also on leaving a `with` block). Counts whose flush fails stay pending for the next one.
    A forked child starts empty (it never flushes its parent's counts a second time).
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
        clock: Callable[[], float] = time.time,
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
        self._clock = clock  # epoch seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reset()
        reset = weakref.WeakMethod(self._reset)

        def in_child() -> None:
            method = reset()
            if method is not None:
                method()

        os.register_at_fork(after_in_child=in_child)

    def _reset(self) -> None:
        # Also the child's state after a fork: fresh locks (another thread may have held one).
        self._lock = threading.Lock()  # guards the pending sums, `_known` and the stats
        self._flush_lock = threading.Lock()  # one flush at a time
        self._pending: Pending = {}
        # Each (tenant id, version id) gets a small int slot: hashing two UUIDs on every record
        # would cost more than the rest of the fast path.
        self._slots: list[Ids] = []
        self._slot_of: dict[Ids, int] = {}
        # (tenant, model) exactly as callers pass them -> slot, once validated and resolved.
        self._known: dict[tuple[object, object], int] = {}
        self._pending_records = 0
        self._recorded = 0
        self._refused: Counter[str] = Counter()
        self._flushes = 0
        self._rows = 0
        self._thread: threading.Thread | None = None

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
            slot = self._known.get((tenant, model))
        except TypeError:  # unhashable, so certainly invalid: the full validation says why
            slot = None
        if slot is not None and at is None and _plain(success, score, latency_ms, count):
            bucket = bucket_of(now, self._bucket)
            self._add(slot, bucket, count, success, score, latency_ms)
            return
        try:
            outcome = validate_outcome(
                tenant,
                model,
                success,
                score,
                latency_ms,
                count,
                at,
                now=datetime.fromtimestamp(now, UTC),
            )
            ids = self._resolve(outcome)
        except FtdeployError as error:
            self._count_refusal(field_of(error))
            raise
        slot = self._slot(ids)
        if len(self._known) < KNOWN_LIMIT:
            self._known[(tenant, model)] = slot  # valid, so hashable (str, int or UUID)
        self._add_outcome(slot, outcome, now)

    def record_many(self, records: Iterable[object]) -> StoreResult:
        """Accept a batch of mappings (the task's format); refusals are listed, not raised."""
        result = StoreResult()
        now = self._clock()
        for index, record in enumerate(records):
            try:
                outcome = parse_outcome(record, now=datetime.fromtimestamp(now, UTC))
                ids = self._resolve(outcome)
            except FtdeployError as error:
                self._count_refusal(field_of(error))
                result.refused.append(Refusal(index, field_of(error), str(error)))
                continue
            self._add_outcome(self._slot(ids), outcome, now)
            result.recorded += outcome.count
        return result

    def _resolve(self, outcome: Outcome) -> Ids:
        ids = self._resolver.cached(outcome.tenant, outcome.model)
        if ids is not None:
            return ids
        with self._sessions() as session:
            return self._resolver.load(session, outcome.tenant, outcome.model)

    def _slot(self, ids: Ids) -> int:
        with self._lock:
            slot = self._slot_of.get(ids)
            if slot is None:
                slot = self._slot_of[ids] = len(self._slots)
                self._slots.append(ids)
            return slot

    def _add_outcome(self, slot: int, outcome: Outcome, now: float) -> None:
        moment = outcome.at.timestamp() if outcome.at is not None else now
        bucket = bucket_of(moment, self._bucket)
        self._add(slot, bucket, outcome.count, outcome.success, outcome.score, outcome.latency_ms)

    def _add(
        self,
        slot: int,
        bucket: int,
        count: int,
        success: bool,
        score: float | None,
        latency_ms: float | None,
    ) -> None:
        key = (slot, bucket)
        with self._lock:
            sums = self._pending.get(key)
            if sums is None:
                sums = self._pending[key] = Sums()
            sums.add_values(count, success, score, latency_ms)
            self._pending_records += 1
            self._recorded += count
            full = self._pending_records >= self._max_pending
            start = self._background and self._thread is None and not self._stop.is_set()
            if start:
                self._thread = threading.Thread(
                    target=self._run, name="ftdeploy-outcomes", daemon=True
                )
                self._thread.start()
        if self._observer is not None:
            self._observer.recorded(count)
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
                pending, self._pending = self._pending, {}
                self._pending_records = 0
            if not pending:
                return 0
            try:
                written = self._write(pending)
            except Exception:
                with self._lock:
                    for key, sums in pending.items():
                        self._pending.setdefault(key, Sums()).merge(sums)
                raise
            with self._lock:
                self._flushes += 1
                self._rows += written
            return written

    def _write(self, pending: Pending) -> int:
        slots = self._slots
        batch: dict[Key, Sums] = {
            (*slots[slot], bucket_time(bucket)): sums for (slot, bucket), sums in pending.items()
        }
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
                fields = {"version_id": str(key[1]), "requests": sums.requests}
                log.warning("outcomes.dropped", extra={"ftdeploy_fields": fields})
        return written

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception as error:  # kept pending; the next flush retries
                fields = {"error": type(error).__name__}
                log.warning("outcomes.flush_failed", extra={"ftdeploy_fields": fields})

    @property
    def stats(self) -> RecorderStats:
        with self._lock:
            return RecorderStats(
                self._recorded, dict(self._refused), self._flushes, self._rows, len(self._pending)
            )

    def close(self) -> None:
        """Stop the background thread and flush what is left (raises if that flush fails).
        `record()` still works afterwards; it then flushes only on size or on `flush()`."""
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
