"""Online outcomes from the serving app, summed into per-version, per-time-bucket counters.

An outcome says how one request (or `count` alike requests) went: the tenant, the model id or the
version that served it, success, and optionally a score in 0..1 and a latency in milliseconds.
No outcome gets a row of its own: outcomes are summed per (version, bucket) and written with one
`INSERT … ON CONFLICT (version_id, bucket_start) DO UPDATE` (adding the sums) per batch.

Three doors share this module: the in-process `registry.canary.recorder.OutcomeRecorder`
(aggregates in memory, flushes in the background, on size or on `flush()`), and the Celery task
`ftdeploy.record_outcomes` and the `ftdeploy outcome` command, which both call `store_outcomes`
inside their unit of work.

Guarantees:
- A malformed outcome (or an unknown tenant or model) is refused with the reason, naming the
  field; nothing of it is kept. Refusals are counted by field.
- An outcome is bucketed by when it happened (`at`, default: when it was recorded), never by when
  it was flushed, so a late flush cannot move it into a canary's window.
- An outcome for a version that is not live (staging, deprecated, archived, or one a stale
  routing snapshot still picked) is kept on its version's counters like any other. It does not
  count toward a canary: the analysis reads only production versions' buckets that begin at or
  after the canary's current step began (`registry.canary.canaries`), and the step begins when the
  version's traffic last changed, after any outcome it got while it was not live.
- The recorder keeps counts whose flush failed and writes them with the next flush: at least
  once. A flush whose commit succeeded but whose acknowledgement was lost is counted twice.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from registry import clock, dialect, validation
from registry.errors import FtdeployError, InvalidInput, TenantNotFound
from registry.models import ModelVersion, OutcomeCounter
from registry.tenants import find_tenant

MAX_COUNT = 1_000_000  # per record: a typo must not flood a canary's statistics
MAX_LATENCY_MS = 24 * 3600 * 1000.0
MAX_MODEL_LENGTH = 400
# Outcomes may be stamped by another host's clock: allow this much skew into the future.
FUTURE_SLACK = timedelta(seconds=60)
RECORD_FIELDS = frozenset({"tenant", "model", "success", "score", "latency_ms", "count", "at"})
REQUIRED_FIELDS = ("tenant", "model", "success")
# Buckets per INSERT: 10 parameters each stays far below PostgreSQL's and SQLite's limits.
UPSERT_CHUNK = 500
# An unknown (tenant, model) is remembered this long, so a flood of them does not query each time.
MISS_TTL_SECONDS = 5.0
_VERSION_REF = re.compile(r"^[vV]?([1-9][0-9]{0,8})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SUM_COLUMNS = (
    "requests",
    "successes",
    "score_sum",
    "score_sq_sum",
    "score_count",
    "latency_ms_sum",
    "latency_count",
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A validated outcome. `model` is a version number (int) or a model id (str)."""

    tenant: str
    model: str | int
    success: bool
    score: float | None = None
    latency_ms: float | None = None
    count: int = 1
    at: datetime | None = None


@dataclass(frozen=True)
class Refusal:
    index: int  # position in the batch
    field: str
    reason: str


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_outcome(
    tenant: object,
    model: object,
    success: object,
    score: object = None,
    latency_ms: object = None,
    count: object = 1,
    at: object = None,
    *,
    now: datetime | None = None,
) -> Outcome:
    """Check one outcome's fields; raise InvalidInput naming the first bad one."""
    tenant = validation.tenant_ref(tenant)
    if not isinstance(success, bool):
        raise InvalidInput("success", f"{success!r} is not true or false")
    if score is not None and (not _number(score) or not 0 <= score <= 1):  # type: ignore[operator]
        raise InvalidInput("score", f"{score!r} is not a number in 0..1")
    if latency_ms is not None and (
        not _number(latency_ms) or not 0 <= latency_ms <= MAX_LATENCY_MS  # type: ignore[operator]
    ):
        raise InvalidInput("latency_ms", f"{latency_ms!r} is not a number of ms in 0..86400000")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise InvalidInput("count", f"{count!r} is not a whole number in 1..{MAX_COUNT}")
    return Outcome(
        tenant=tenant,
        model=_model_ref(model),
        success=success,
        score=None if score is None else float(score),  # type: ignore[arg-type]
        latency_ms=None if latency_ms is None else float(latency_ms),  # type: ignore[arg-type]
        count=count,
        at=_moment(at, now or clock.now()),
    )


def parse_outcome(record: object, *, now: datetime | None = None) -> Outcome:
    """An outcome from a plain mapping (a task argument, JSON). Unknown keys are refused: a typo
    such as "sucess" must not pass as a missing optional field."""
    if not isinstance(record, Mapping):
        raise InvalidInput("record", f"{type(record).__name__} is not an object")
    unknown = sorted(str(key) for key in record if key not in RECORD_FIELDS)
    if unknown:
        raise InvalidInput("record", f"unexpected field(s) {', '.join(unknown)}")
    for name in REQUIRED_FIELDS:
        if name not in record:
            raise InvalidInput(name, "missing")
    return validate_outcome(**{str(k): v for k, v in record.items()}, now=now)


def _model_ref(model: object) -> str | int:
    if isinstance(model, int) and not isinstance(model, bool):
        if model < 1:
            raise InvalidInput("model", f"{model} is not a version number (1, 2, …)")
        return model
    if not isinstance(model, str):
        raise InvalidInput("model", f"{model!r} is not a model id or version")
    text = model.strip()
    matched = _VERSION_REF.match(text)
    if matched:
        return int(matched.group(1))
    if not text or len(text) > MAX_MODEL_LENGTH or not text.isprintable() or " " in text:
        raise InvalidInput("model", f"{model[:80]!r} is not a model id or version")
    return text


def _moment(at: object, now: datetime) -> datetime | None:
    if at is None:
        return None
    if isinstance(at, str):
        text = at
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInput("at", f"{text[:40]!r} is not an ISO 8601 time") from None
    if not isinstance(at, datetime):
        raise InvalidInput("at", f"{at!r} is not a time")
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput("at", f"{at.isoformat()} has no time zone")
    try:
        # Near datetime's limits the conversion itself overflows (0001-01-01T00:00:00+14:00).
        if at > now + FUTURE_SLACK:
            raise InvalidInput("at", f"{at.isoformat()} is in the future")
        moment = at.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidInput("at", f"{at.isoformat()} is out of range") from None
    if moment < _EPOCH:
        raise InvalidInput("at", f"{at.isoformat()} is before 1970")
    return moment


def bucket_of(epoch_seconds: float, width: int) -> int:
    """The start, in whole seconds since the epoch, of the `width`-second bucket holding the
    moment. The one bucketing rule: counters, the recorder's fast path and the analysis window
    all align on it."""
    return int(epoch_seconds // width) * width


def bucket_time(bucket: int) -> datetime:
    """A bucket start (`bucket_of`) as a UTC time, the counters' `bucket_start`."""
    return _EPOCH + timedelta(seconds=bucket)


def bucket_start(at: datetime, width: int) -> datetime:
    """The start of the `width`-second bucket holding `at`, as a UTC time."""
    # Whole seconds first (floor), in integers: exact, and the same bucket as `bucket_of`'s.
    return bucket_time(bucket_of((at - _EPOCH) // timedelta(seconds=1), width))


class Sums:
    """Running sums of one (version, bucket). Mutable; guarded by its owner's lock."""

    __slots__ = SUM_COLUMNS

    def __init__(self) -> None:
        self.requests = self.successes = self.score_count = self.latency_count = 0
        self.score_sum = self.score_sq_sum = self.latency_ms_sum = 0.0

    def add(self, outcome: Outcome) -> None:
        self.add_values(outcome.count, outcome.success, outcome.score, outcome.latency_ms)

    def add_values(
        self, n: int, success: bool, score: float | None, latency_ms: float | None
    ) -> None:
        self.requests += n
        if success:
            self.successes += n
        if score is not None:
            self.score_count += n
            self.score_sum += n * score
            self.score_sq_sum += n * score * score
        if latency_ms is not None:
            self.latency_count += n
            self.latency_ms_sum += n * latency_ms

    def merge(self, other: Sums) -> None:
        for name in SUM_COLUMNS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int | float]:
        return {name: getattr(self, name) for name in SUM_COLUMNS}


Key = tuple[uuid.UUID, uuid.UUID, datetime]  # tenant id, version id, bucket start
Ids = tuple[uuid.UUID, uuid.UUID]  # tenant id, version id


class VersionResolver:
    """(tenant, model id or version) → (tenant id, version id), cached for the process.

    A version's model id and number never change, so a hit never goes stale. A miss (unknown
    tenant or model) is remembered for MISS_TTL_SECONDS, then asked again: a version registered
    in the meantime is found. A miss keeps what its refusal needs to be built again, not the
    exception (raising one object again and again grows its traceback each time). Thread-safe
    (single dict operations under the GIL).
    """

    def __init__(self, limit: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._hits: dict[tuple[str, str | int], Ids] = {}
        self._misses: dict[tuple[str, str | int], tuple[float, Callable[[], FtdeployError]]] = {}
        self._limit = limit
        self._clock = clock

    def cached(self, tenant: str, model: str | int) -> Ids | None:
        """The cached ids; raises the cached refusal of a recent miss."""
        hit = self._hits.get((tenant, model))
        if hit is not None:
            return hit
        miss = self._misses.get((tenant, model))
        if miss is not None and miss[0] > self._clock():
            raise miss[1]()
        return None

    def load(self, session: Session, tenant: str, model: str | int) -> Ids:
        """Look the version up; raises TenantNotFound, InvalidInput("model", ...)."""
        key = (tenant, model)
        try:
            ids = self._query(session, tenant, model)
        except FtdeployError as error:
            if len(self._misses) >= self._limit:
                self._misses.clear()
            self._misses[key] = (self._clock() + MISS_TTL_SECONDS, _rebuilder(error))
            raise
        if len(self._hits) >= self._limit:
            self._hits.clear()
        self._hits[key] = ids
        self._misses.pop(key, None)
        return ids

    def resolve(self, session: Session, tenant: str, model: str | int) -> Ids:
        return self.cached(tenant, model) or self.load(session, tenant, model)

    @staticmethod
    def _query(session: Session, tenant_ref: str, model: str | int) -> Ids:
        tenant = find_tenant(session, tenant_ref)
        query = select(ModelVersion.id).where(ModelVersion.tenant_id == tenant.id)
        if isinstance(model, int):
            query = query.where(ModelVersion.version == model)
        else:
            # Each run's model id is unique; if a model were registered twice, the newest wins.
            query = query.where(ModelVersion.model_id == model)
        version_id = session.scalar(query.order_by(ModelVersion.version.desc()).limit(1))
        if version_id is None:
            shown = f"v{model}" if isinstance(model, int) else repr(model)
            raise InvalidInput("model", f"tenant {tenant.slug!r} has no version {shown}")
        return tenant.id, version_id


def _rebuilder(error: FtdeployError) -> Callable[[], FtdeployError]:
    """A function that makes a fresh refusal like `error` (no traceback, no context kept)."""
    if isinstance(error, TenantNotFound):
        tenant = error.tenant
        return lambda: TenantNotFound(tenant)
    if isinstance(error, InvalidInput):
        name, problem = error.field, error.problem
        return lambda: InvalidInput(name, problem)
    message = str(error)
    return lambda: FtdeployError(message)


def upsert_counters(session: Session, sums: Mapping[Key, Sums]) -> int:
    """Add `sums` to the counters: one INSERT … ON CONFLICT DO UPDATE per UPSERT_CHUNK buckets.

    Rows are written in (version, bucket) order, so concurrent writers lock them in the same order
    and cannot deadlock each other on PostgreSQL. Flushes only; the caller commits. Returns the
    number of statements executed.
    """
    table = cast(Table, OutcomeCounter.__table__)
    ordered = sorted(sums.items(), key=lambda item: (item[0][1], item[0][2]))
    statements = 0
    for start in range(0, len(ordered), UPSERT_CHUNK):
        chunk = ordered[start : start + UPSERT_CHUNK]
        rows = [
            {"tenant_id": t, "version_id": v, "bucket_start": b, **s.as_dict()}
            for (t, v, b), s in chunk
        ]
        stmt = dialect.insert(session, table).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=["version_id", "bucket_start"],
            set_={name: table.c[name] + stmt.excluded[name] for name in SUM_COLUMNS},
        )
        session.execute(stmt)
        statements += 1
    return statements


MAX_BATCH = 10_000


def check_batch(batch: object) -> list[object]:
    """A batch from outside: a list of at most MAX_BATCH records. Raises InvalidInput("batch")."""
    if not isinstance(batch, list | tuple):
        raise InvalidInput("batch", f"{type(batch).__name__} is not a list of records")
    if len(batch) > MAX_BATCH:
        raise InvalidInput("batch", f"{len(batch)} records; at most {MAX_BATCH} per batch")
    return list(batch)


@dataclass
class StoreResult:
    recorded: int = 0  # outcomes stored (sum of counts)
    refused: list[Refusal] = field(default_factory=list)


def store_outcomes(
    session: Session,
    records: Iterable[object],
    *,
    bucket_seconds: int,
    resolver: VersionResolver | None = None,
    now: datetime | None = None,
) -> StoreResult:
    """Validate, resolve and store a batch in the caller's transaction (the task's and the CLI's
    path). Each refused record is listed with its index and reason; the rest are stored: a
    record whose count would overflow its bucket's counter, or whose version was deleted
    meanwhile, is refused on its own (`registry.canary.counter_writes.store_isolated`) and the other
    records of the batch, of every tenant, are kept."""
    from registry.canary.counter_writes import MAX_COUNTER, store_isolated

    now = now or clock.now()
    resolver = resolver or VersionResolver()
    result = StoreResult()
    pending: dict[Key, Sums] = {}
    members: dict[Key, list[tuple[int, int]]] = {}  # the (index, count) of each row's records
    for index, record in enumerate(records):
        try:
            outcome = record if isinstance(record, Outcome) else parse_outcome(record, now=now)
            tenant_id, version_id = resolver.resolve(session, outcome.tenant, outcome.model)
        except FtdeployError as error:
            result.refused.append(Refusal(index, field_of(error), str(error)))
            continue
        key = (tenant_id, version_id, bucket_start(outcome.at or now, bucket_seconds))
        sums = pending.setdefault(key, Sums())
        if sums.requests > MAX_COUNTER - outcome.count:
            result.refused.append(Refusal(index, "count", "the count would overflow its bucket"))
            continue
        sums.add(outcome)
        members.setdefault(key, []).append((index, outcome.count))
        result.recorded += outcome.count
    for key, (field_name, reason) in store_isolated(session, pending).items():
        for index, count in members.get(key, ()):
            result.refused.append(Refusal(index, field_name, reason))
            result.recorded -= count
    if pending:
        session.flush()
    result.refused.sort(key=lambda refusal: refusal.index)
    return result


def field_of(error: FtdeployError) -> str:
    """The field a refusal is counted under."""
    name = getattr(error, "field", None)
    if isinstance(name, str):
        return name
    return "tenant" if isinstance(error, TenantNotFound) else "record"
