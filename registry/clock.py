"""The one clock the registry reads: `now()`, UTC-aware.

Every timestamp the registry writes (a row's `created_at`, a canary step's start, an operation's
end) and every "how long ago" it decides on comes from `now()`. Tests that drive time (the sweep's
bake times, retention) set the source once with `use(...)` instead of patching each module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

Source = Callable[[], datetime]


def system_time() -> datetime:
    return datetime.now(UTC)


_source: Source = system_time


def now() -> datetime:
    """The current time, from the source in force (the system's by default)."""
    return _source()


def set_source(source: Source | None) -> Source:
    """Make `source` the clock (None: the system's again); returns the source it replaced."""
    global _source
    previous, _source = _source, source or system_time
    return previous


@contextmanager
def use(source: Source) -> Iterator[Source]:
    """`source` is the clock inside the block; the previous one is restored on leaving it."""
    previous = set_source(source)
    try:
        yield source
    finally:
        set_source(previous)
