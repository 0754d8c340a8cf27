"""`OutcomeRecorder`: the serving app's in-process door for outcomes.

`record()` validates an outcome, resolves its version (cached) and adds it to in-memory sums per
(tenant, version, bucket); flushes write those sums with batched upserts
(`registry.canary.counters.upsert_counters`). One flush writes one row per bucket touched,
however many outcomes it holds: that, not the request rate, is what the database sees.

Usage in a serving app::

    recorder = OutcomeRecorder()          # the configured database and bucket width
    recorder.record("acme", model_id, success=True, score=0.9, latency_ms=412)
    ...
    recorder.close()                      # at shutdown: flushes what is left

`record()` never raises into the request that calls it: a refused outcome (malformed, an unknown
tenant or model, `None` as the model when nothing is live, a time out of range, the database
unreachable while resolving it) returns False and is counted by field (`stats.refused`, the
observer's metric), its reason kept in `stats.recent_refusals` and logged at a bounded rate
(`registry.canary.refusals`).
Flushes write one transaction for everything, or one per tenant when that fails, so a tenant
whose rows the database refuses does not hold back the others (`registry.canary.counter_writes`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from registry.canary.counter_writes import MAX_COUNTER, write_by_tenant
from registry.canary.counters import Ids, Key, Sums, bucket_of, bucket_time
from registry.canary.outcome_input import (
    Outcome,
    Refusal,
    field_of,
    parse_outcome,
    plainly_valid,
    validate_outcome,
)
from registry.canary.outcomes import StoreResult
from registry.canary.refusals import (
    OVERFLOW,
    OutcomeObserver,
    Refusals,
    bounded,
    failure_field,
    first_line,
)
from registry.canary.resolver import VersionResolver
from registry.db import unit_of_work
from registry.errors import FtdeployError, InvalidInput

log = logging.getLogger("ftdeploy.outcomes")

KNOWN_LIMIT = 100_000  # (tenant, model) pairs, as callers pass them, kept for the fast path
Pending = dict[tuple[int, int], Sums]  # (slot of the ids, bucket start in epoch seconds)


@dataclass(frozen=True)
class RecorderStats:
    recorded: int  # outcomes accepted (sum of counts)
    refused: dict[str, int]  # refusals by field (outcomes, and rows a flush had to drop)
    flushes: int  # flushes that wrote something
    rows_written: int  # (version, bucket) rows upserted
    pending: int  # buckets waiting for the next flush
    rows_dropped: int = 0  # rows the database refused for good (overflow, version deleted)
    recent_refusals: tuple[str, ...] = ()  # "field: reason" of the last refusals, newest last


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
        self._lock = threading.Lock()  # guards the pending sums, `_known` and the counts
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
        self._flushes = 0
        self._rows = 0
        self._refusals = Refusals(self._observer)
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
    ) -> bool:
        """Accept one outcome (or `count` alike ones); True when it is kept. Never raises: a
        refused outcome returns False, is counted under its field and keeps nothing."""
        try:
            now = self._clock()
            try:
                slot = self._known.get((tenant, model))
            except TypeError:  # unhashable, so certainly invalid: the validation says why
                slot = None
            if slot is not None and at is None and plainly_valid(success, score, latency_ms, count):
                bucket = bucket_of(now, self._bucket)
                return self._add(slot, bucket, count, success, score, latency_ms)
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
            slot = self._slot(self._resolve(outcome))
            if len(self._known) < KNOWN_LIMIT:
                self._known[(tenant, model)] = slot  # valid, so hashable (str, int or UUID)
            return self._add_outcome(slot, outcome, now)
        except FtdeployError as error:
            self._refusals.add(field_of(error), str(error))
        except Exception as error:  # the database, or a bug: never the request's problem
            self._refusals.add(failure_field(error), f"{type(error).__name__}: {error}")
        return False

    def record_many(self, records: Iterable[object]) -> StoreResult:
        """Accept a batch of mappings (the task's format); refusals are listed, not raised."""
        result = StoreResult()
        now = self._clock()
        for index, record in enumerate(records):
            try:
                outcome = parse_outcome(record, now=datetime.fromtimestamp(now, UTC))
                kept = self._add_outcome(self._slot(self._resolve(outcome)), outcome, now)
            except FtdeployError as error:
                field_name, reason = field_of(error), str(error)
            except Exception as error:
                field_name, reason = failure_field(error), f"{type(error).__name__}: {error}"
            else:
                if kept:
                    result.recorded += outcome.count
                else:
                    result.refused.append(Refusal(index, "count", OVERFLOW))
                continue
            self._refusals.add(field_name, reason)
            result.refused.append(Refusal(index, field_name, bounded(reason)))
        return result

    def _resolve(self, outcome: Outcome) -> Ids:
        ids = self._resolver.cached(outcome.tenant, outcome.model)
        if ids is not None:
            return ids
        with unit_of_work(self._sessions) as session:
            return self._resolver.load(session, outcome.tenant, outcome.model)

    def _slot(self, ids: Ids) -> int:
        with self._lock:
            slot = self._slot_of.get(ids)
            if slot is None:
                slot = self._slot_of[ids] = len(self._slots)
                self._slots.append(ids)
            return slot

    def _add_outcome(self, slot: int, outcome: Outcome, now: float) -> bool:
        moment = outcome.at.timestamp() if outcome.at is not None else now
        bucket = bucket_of(moment, self._bucket)
        return self._add(
            slot, bucket, outcome.count, outcome.success, outcome.score, outcome.latency_ms
        )

    def _add(
        self,
        slot: int,
        bucket: int,
        count: int,
        success: bool,
        score: float | None,
        latency_ms: float | None,
    ) -> bool:
        key = (slot, bucket)
        with self._lock:
            sums = self._pending.get(key)
            if sums is None:
                sums = self._pending[key] = Sums()
            elif sums.requests > MAX_COUNTER - count:
                sums = None  # the bucket's counter would overflow: refuse this one
            if sums is not None:
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
        if sums is None:
            self._refusals.add("count", OVERFLOW)
            return False
        if self._observer is not None:
            self._observer.recorded(count)
        if full:
            if self._background and not self._stop.is_set():
                self._wake.set()
            else:
                self._flush_logged()
        return True

    def flush(self) -> int:
        """Write everything pending now; returns the number of (version, bucket) rows written.

        One transaction, or one per tenant when that fails: a tenant's rows that fail do not
        hold back the others'. Rows the database refuses for good (a counter that would
        overflow, a version deleted meanwhile) are dropped and counted as refusals; rows that
        failed otherwise stay pending for the next flush, and the first such error is raised
        once the others are written.
        """
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
                self._pending_records = 0
            if not pending:
                return 0
            slots = self._slots
            origin: dict[Key, tuple[int, int]] = {
                (*slots[slot], bucket_time(bucket)): (slot, bucket) for slot, bucket in pending
            }
            batch = {key: pending[place] for key, place in origin.items()}
            report = write_by_tenant(self._sessions, batch)
            with self._lock:
                for key in batch:  # not settled: kept for the next flush
                    self._pending.setdefault(origin[key], Sums()).merge(batch[key])
                if report.written:
                    self._flushes += 1
                self._rows += report.written
            for key, (field_name, reason) in report.refused.items():
                self._refusals.add(
                    field_name, f"dropped a row of version {key[1]}: {reason}", rows=1
                )
            if report.error is not None:
                raise report.error
            return report.written

    def _flush_logged(self) -> None:
        """A flush whose failure is logged, not raised (the background thread's, record()'s)."""
        try:
            self.flush()
        except Exception as error:  # kept pending; the next flush retries
            rate = self._refusals.log_rate
            allowed, suppressed = rate.allow(("flush_failed", type(error).__name__))
            if allowed:
                fields = {
                    "error": type(error).__name__,
                    "reason": bounded(first_line(error)),
                    "pending": self.stats.pending,
                    "suppressed": suppressed,
                }
                log.warning("outcomes.flush_failed", extra={"ftdeploy_fields": fields})

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            self._flush_logged()

    @property
    def stats(self) -> RecorderStats:
        refused, dropped, recent = self._refusals.snapshot()
        with self._lock:
            return RecorderStats(
                self._recorded,
                refused,
                self._flushes,
                self._rows,
                len(self._pending),
                dropped,
                recent,
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
