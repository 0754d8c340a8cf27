"""Traffic splits as plain data: {version number: percent}. Pure functions, no database."""

from __future__ import annotations

from collections.abc import Mapping

Split = dict[int, int]


def rescale(weights: Mapping[int, int], total: int) -> Split:
    """Share `total` among `weights` in proportion, as integers summing to exactly `total`.

    Largest remainder method: each gets the floor of its exact share, and the points left over go
    to the largest fractional parts (ties to the newer version, so a result never depends on dict
    order). Versions whose share rounds to 0 are left out: they leave production.
    """
    if total < 0:
        raise ValueError("total must be >= 0")
    weight_sum = sum(weights.values())
    if total == 0 or not weights:
        return {}
    if weight_sum <= 0:
        raise ValueError("weights must sum to more than 0")
    floors = {version: weight * total // weight_sum for version, weight in weights.items()}
    remainders = sorted(
        weights,
        key=lambda version: (-(weights[version] * total % weight_sum), -version),
    )
    left = total - sum(floors.values())
    for version in remainders[:left]:
        floors[version] += 1
    return {version: share for version, share in floors.items() if share > 0}


def after_promote(current: Mapping[int, int], version: int, percent: int) -> Split:
    """The split after giving `version` `percent` (1..100) of the traffic.

    100 makes it the only production version. Otherwise the other production versions share
    100 - percent in proportion to their traffic; with none, there is nothing to split and the
    version takes 100 (the seed recorded 10% while it served everything).
    """
    if not 1 <= percent <= 100:
        raise ValueError("percent must be in 1..100")
    others = {v: p for v, p in current.items() if v != version and p > 0}
    if percent == 100 or not others:
        return {version: 100}
    return {version: percent, **rescale(others, 100 - percent)}


def after_removal(current: Mapping[int, int], version: int) -> Split:
    """The split once `version` leaves production: the rest rescaled to 100 (or nothing)."""
    others = {v: p for v, p in current.items() if v != version and p > 0}
    return rescale(others, 100)


def is_valid(split: Mapping[int, int]) -> bool:
    """The invariant: production traffic sums to exactly 100, each share in 1..100, or none."""
    if not split:
        return True
    return sum(split.values()) == 100 and all(1 <= p <= 100 for p in split.values())


def as_json(split: Mapping[int, int]) -> dict[str, int]:
    return {str(version): percent for version, percent in sorted(split.items())}
