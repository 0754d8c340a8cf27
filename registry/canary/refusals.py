"""What the in-process recorder refused, kept so that a refusal never raises into a request yet
is never silent: counts by field, the rows a flush had to drop, the last reasons, each told to
the observer and logged at a bounded rate; and the bounded, masked form of a reason from
outside."""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from registry.lograte import LogRate
from registry.masking import mask

log = logging.getLogger("ftdeploy.outcomes")

RECENT_REFUSALS = 20
MAX_REASON = 300
OVERFLOW = "the count would overflow its bucket's counter"


class OutcomeObserver(Protocol):
    """Told about every accepted and refused outcome (the worker feeds Prometheus with it)."""

    def recorded(self, count: int) -> None: ...

    def refused(self, field: str) -> None: ...


class Refusals:
    """Refusals of one recorder (outcomes, and rows a flush dropped). Thread-safe."""

    def __init__(self, observer: OutcomeObserver | None) -> None:
        self._observer = observer
        self._lock = threading.Lock()
        self._by_field: Counter[str] = Counter()
        self._dropped = 0
        self._recent: deque[str] = deque(maxlen=RECENT_REFUSALS)
        self.log_rate = LogRate(burst=5, per_seconds=60.0)  # also the recorder's other warnings

    def add(self, field_name: str, reason: str, rows: int = 0) -> None:
        """Count a refusal (`rows`: rows a flush dropped with it) and log it at a bounded rate."""
        reason = bounded(reason)
        with self._lock:
            self._by_field[field_name] += 1
            self._dropped += rows
            self._recent.append(f"{field_name}: {reason}")
        if self._observer is not None:
            self._observer.refused(field_name)
        allowed, suppressed = self.log_rate.allow(("refused", field_name))
        if allowed:
            fields = {"field": field_name, "reason": reason, "suppressed": suppressed}
            log.warning("outcomes.refused", extra={"ftdeploy_fields": fields})

    def snapshot(self) -> tuple[dict[str, int], int, tuple[str, ...]]:
        """(refusals by field, rows dropped, "field: reason" of the last ones, newest last)."""
        with self._lock:
            return dict(self._by_field), self._dropped, tuple(self._recent)


def failure_field(error: BaseException) -> str:
    """The field an unexpected failure is counted under: the database's, or ours."""
    return "database" if isinstance(error, SQLAlchemyError) else "internal"


def first_line(error: BaseException) -> str:
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def bounded(reason: str) -> str:
    """A reason from outside (an input's repr, a driver's message): masked, one line, bounded."""
    text = " ".join(mask(reason[: 4 * MAX_REASON]).split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"
