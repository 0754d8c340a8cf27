"""A bound on how often one kind of line is logged: what a flood of bad input, or a server out of
file descriptors, would otherwise turn into gigabytes of identical lines.

`LogRate(burst, per_seconds).allow(key)` answers, for each occurrence of `key`, whether to log it
now: the first `burst` of each window of `per_seconds` are logged, the rest only counted; the
first line logged in the next window carries how many were suppressed meanwhile. Thread-safe.
The number of keys kept is bounded too (a flood of distinct keys resets the table).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

MAX_KEYS = 1000


@dataclass
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


class LogRate:
    def __init__(
        self,
        burst: int = 10,
        per_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_seconds = per_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[Hashable, _Window] = {}

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """(log this one?, occurrences suppressed since the last one logged, when logging)."""
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            carried = 0
            if window is None or now - window.start >= self.per_seconds:
                carried = window.suppressed if window is not None else 0
                if window is None and len(self._windows) >= MAX_KEYS:
                    self._windows.clear()
                window = self._windows[key] = _Window(now)
            if window.logged < self.burst:
                window.logged += 1
                return True, carried
            window.suppressed += 1
            return False, 0
