"""The canary's inputs checked before any decision: its steps (as an operator types them, and as
stored), its policy's ranges, and the counts and times of its state. Each raises InvalidInput
naming the first field out of range, so a bad row or a bad flag is refused, never decided on."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from registry.errors import InvalidInput
from registry.models import Metric

if TYPE_CHECKING:  # analysis imports this module: its types are only annotations here
    from registry.canary.analysis import CanaryPolicy, CanaryState, Counts


def next_step(current: int, steps: tuple[int, ...]) -> int:
    """The smallest step above `current`, else 100."""
    return min((step for step in steps if step > current), default=100)


def parse_steps(text: str) -> tuple[int, ...]:
    """Parse "10,25,50,100" into (10, 25, 50, 100); 100 is appended when missing.

    Raises InvalidInput("steps", ...) unless the steps are whole numbers in 1..100, strictly
    increasing.
    """
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):  # also rejects "", "-5", "1.5", "10,,25"
        raise InvalidInput("steps", f"{text!r} is not a comma-separated list of whole numbers")
    steps = tuple(int(part) for part in parts)
    if steps[-1] != 100:
        steps = (*steps, 100)
    _check_steps(steps)
    return steps


def _check_steps(steps: Sequence[int]) -> None:
    if not steps or any(isinstance(s, bool) or not isinstance(s, int) for s in steps):
        raise InvalidInput("steps", f"{list(steps)} is not a list of whole numbers")
    if not all(1 <= step <= 100 for step in steps):
        raise InvalidInput("steps", f"{list(steps)}: every step must be in 1..100")
    if any(a >= b for a, b in itertools.pairwise(steps)):
        raise InvalidInput("steps", f"{list(steps)} is not strictly increasing")
    if steps[-1] != 100:
        raise InvalidInput("steps", f"{list(steps)} does not end at 100")


def _finite(value: object) -> bool:
    if type(value) is float or type(value) is int:  # the usual case, without the isinstance walk
        return math.isfinite(value)
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_METRICS = frozenset(Metric)


def validate_policy(policy: CanaryPolicy) -> None:
    """Raise InvalidInput for the first field out of range."""
    if policy.metric not in _METRICS:
        raise InvalidInput("metric", f"{policy.metric!r} is not one of {', '.join(Metric)}")
    if not _finite(policy.threshold) or not 0 <= policy.threshold <= 1:
        raise InvalidInput("threshold", f"{policy.threshold!r} is not a number in 0..1")
    if isinstance(policy.min_samples, bool) or not isinstance(policy.min_samples, int):
        raise InvalidInput("min_samples", f"{policy.min_samples!r} is not a whole number")
    if policy.min_samples < 1:
        raise InvalidInput("min_samples", f"{policy.min_samples} is below 1")
    if not _finite(policy.bake_seconds) or policy.bake_seconds < 0:
        raise InvalidInput("bake_seconds", f"{policy.bake_seconds!r} is not a number >= 0")
    _check_steps(policy.steps)
    # A deadline within the bake time would roll back every canary before it could pass.
    if not _finite(policy.deadline_seconds) or policy.deadline_seconds <= policy.bake_seconds:
        raise InvalidInput(
            "deadline_seconds",
            f"{policy.deadline_seconds!r} must be a number above the bake time "
            f"({policy.bake_seconds:g} s)",
        )
    if not isinstance(policy.auto_rollback, bool):
        raise InvalidInput("auto_rollback", f"{policy.auto_rollback!r} is not true or false")


def check_policy(policy: CanaryPolicy) -> None:
    """`validate_policy`, once per policy object: a fleet's canaries share a few policies (each
    made once, `canaries.canary_policy`), and the dashboard and the sweep decide every one of
    them. Known by identity, which costs less than the policy's hash."""
    if _checked.get(id(policy)) is policy:
        return
    validate_policy(policy)  # raises for an invalid one, which is then not kept
    # Kept only when immutable throughout (steps as a list could change after the check), and
    # held, so that its id is not reused while it is here.
    if type(policy.steps) is tuple:
        if len(_checked) >= 1024:
            _checked.clear()
        _checked[id(policy)] = policy


_checked: dict[int, CanaryPolicy] = {}


def validate_state(state: CanaryState, now: datetime) -> None:
    percent, started, canary, stable = state
    if type(percent) is not int and (isinstance(percent, bool) or not isinstance(percent, int)):
        raise InvalidInput("traffic_percent", f"{percent!r} is not a whole number")
    if not 1 <= percent <= 99:
        raise InvalidInput("traffic_percent", f"{percent} is not a canary's 1..99")
    for field, moment in (("step_started_at", started), ("now", now)):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise InvalidInput(field, f"{moment.isoformat()} has no time zone")
    _check_counts("canary", canary)
    _check_counts("stable", stable)


def _check_counts(side: str, counts: Counts) -> None:
    requests, successes, total, n, squares = counts
    if not 0 <= successes <= requests or n < 0:
        raise InvalidInput(side, f"{successes} successes of {requests} requests")
    if n == 0 and total == 0 and squares == 0 and type(total) in _PLAIN and type(squares) in _PLAIN:
        return  # no scores (the usual case of a success-rate canary): the checks below all pass
    if not (_finite(total) and _finite(squares)):
        raise InvalidInput(side, "score sums are not finite")
    # Scores lie in 0..1, so 0 <= sum of squares <= sum <= count, and by Cauchy-Schwarz
    # sum^2 <= count * sum of squares (with room for rounding).
    at_least_one = max(1, n)
    eps = 1e-9 * at_least_one
    within = -eps <= squares <= total + eps and total <= n + eps
    if not within or total**2 > n * squares + eps * at_least_one:
        raise InvalidInput(side, f"scores sum {total} / squares {squares} over {n} scores")


_PLAIN = (float, int)  # the types `_finite` takes without its slower checks
