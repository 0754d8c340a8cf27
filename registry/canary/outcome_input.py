"""An outcome as it comes in from outside, and how it is checked: the validated `Outcome`, the
checks of its fields (from keyword values, from a plain mapping, and the recorder's fast check of
plain values), the bound on a batch, and a refusal naming the field at fault.

A malformed outcome is refused with the reason, naming the field; nothing of it is kept.
Refusals are counted by field (`field_of`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from registry import clock, validation
from registry.canary.counters import EPOCH
from registry.errors import FtdeployError, InvalidInput, TenantNotFound

MAX_COUNT = 1_000_000  # per record: a typo must not flood a canary's statistics
MAX_LATENCY_MS = 24 * 3600 * 1000.0
MAX_MODEL_LENGTH = 400
MAX_BATCH = 10_000
# Outcomes may be stamped by another host's clock: allow this much skew into the future.
FUTURE_SLACK = timedelta(seconds=60)
RECORD_FIELDS = frozenset({"tenant", "model", "success", "score", "latency_ms", "count", "at"})
REQUIRED_FIELDS = ("tenant", "model", "success")
_VERSION_REF = re.compile(r"^[vV]?([1-9][0-9]{0,8})$")


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


def plainly_valid(success: object, score: object, latency_ms: object, count: object) -> bool:
    """True when the values are certainly valid (exact types, in range, so not NaN): the
    recorder's fast path. Anything else takes `validate_outcome`, which says what is wrong."""
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
    if moment < EPOCH:
        raise InvalidInput("at", f"{at.isoformat()} is before 1970")
    return moment


def check_batch(batch: object) -> list[object]:
    """A batch from outside: a list of at most MAX_BATCH records. Raises InvalidInput("batch")."""
    if not isinstance(batch, list | tuple):
        raise InvalidInput("batch", f"{type(batch).__name__} is not a list of records")
    if len(batch) > MAX_BATCH:
        raise InvalidInput("batch", f"{len(batch)} records; at most {MAX_BATCH} per batch")
    return list(batch)


def field_of(error: FtdeployError) -> str:
    """The field a refusal is counted under."""
    name = getattr(error, "field", None)
    if isinstance(name, str):
        return name
    return "tenant" if isinstance(error, TenantNotFound) else "record"
