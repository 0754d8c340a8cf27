"""A split as people read it: the production versions in order, each with its share and role."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import NamedTuple


class Share(NamedTuple):
    """One version's share of a split (a named tuple: the fleet's rows look their bars up by
    their shares, and a dataclass's hash is Python code, a named tuple's is not)."""

    version: int
    percent: int
    role: str  # "stable" | "canary" (the newest of several production versions)


def shares(split: Mapping[int, int] | Mapping[str, int]) -> list[Share]:
    """The split's shares, oldest version first; with two or more, the newest is the canary."""
    ordered = sorted((int(v), int(p)) for v, p in split.items() if int(p) > 0)
    newest = ordered[-1][0] if len(ordered) > 1 else None
    return [Share(v, p, "canary" if v == newest else "stable") for v, p in ordered]


@lru_cache(maxsize=4096)  # a fleet has few distinct splits
def shares_of(split: tuple[tuple[int, int], ...]) -> tuple[Share, ...]:
    """`shares` of (version, percent) pairs, as a tuple (it is shared: cached)."""
    return tuple(shares(dict(split)))


def text(split: Sequence[Share]) -> str:
    """`v1 90% · v2 10%`, or `nothing serving`: the bar's words, for readers and screen readers."""
    return " · ".join(f"v{s.version} {s.percent}%" for s in split) or "nothing serving"
