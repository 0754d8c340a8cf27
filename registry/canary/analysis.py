"""Canary analysis: each sweep's decision for one live canary, as one pure function.

`decide` reads only its arguments — the canary's and the stable versions' outcome counts since
the canary's current step began, the policy and the time — and returns hold, step, promote or
rollback with the sentence the audit trail keeps. No database, no clock, no I/O: the sweep gathers
the counts, and any decision can be replayed from what it was given.

Pitfalls of canary tools (Flagger, Argo Rollouts, Kayenta) this is built to avoid:
- treating "no data" as a pass: a canary that served nothing, or whose outcomes never arrive,
  never steps or promotes; promotion needs both the bake time and the minimum samples;
- an inconclusive analysis that waits forever for a human: the progress deadline rolls it back;
- rolling back on a few unlucky requests: a rollback needs a 95% test AND a floor of failures;
- flapping: traffic only moves forward one step at a time, and each step restarts the window
  (bake and samples), so one noisy sweep cannot bounce traffic; the only way back is a rollback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from registry.canary.checks import (
    check_policy,
    next_step,
    validate_state,
)
from registry.models import Metric

# One-sided 95%: the canary's bounds and the "significantly worse than stable" tests.
Z_95 = 1.645
# Failures (or, for scores, the shortfall from a perfect 1.0) a canary must show before it can be
# rolled back, whatever the statistics say (capped by min_samples). Counting failures instead of
# requests means good news can never trigger a rollback: one more success does not move a canary
# closer to this floor, as a floor on requests would ("0/9 holds, 1/10 rolls back").
EARLY_ROLLBACK_FAILURES = 5


class Action(StrEnum):
    HOLD = "hold"
    STEP = "step"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


# Counts and CanaryState are named tuples rather than frozen dataclasses, as `_Measure` and
# `Ruling`: two Counts and a state are made per canary per sweep and per fleet page, and a frozen
# dataclass's __init__ costs about three times as much. Immutable all the same.
class Counts(NamedTuple):
    """Outcomes of one side (the canary, or the stable versions together) over the window."""

    requests: int = 0
    successes: int = 0
    score_sum: float = 0.0  # sum of scores in 0..1
    score_count: int = 0
    score_sq_sum: float = 0.0  # sum of squared scores, for the variance of the mean score


@dataclass(frozen=True, slots=True)
class CanaryPolicy:
    metric: Metric
    threshold: float  # 0..1: the success rate or mean score the canary must meet
    min_samples: int  # per step, >= 1
    bake_seconds: float  # per step, >= 0
    steps: tuple[int, ...]  # e.g. (10, 25, 50, 100); the last is always 100
    deadline_seconds: float  # per step: no decision by then -> rollback; > bake_seconds
    auto_rollback: bool  # False: a failing canary holds, with the reason, for an operator


class CanaryState(NamedTuple):
    traffic_percent: int  # the canary's current traffic, 1..99
    step_started_at: datetime  # when the current step began (UTC aware)
    canary: Counts
    stable: Counts  # the other production versions together, same window


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str  # one sentence a human reads in the audit trail
    next_percent: int | None  # STEP: the next step's percent; PROMOTE: 100; else None
    metric_value: float | None  # the canary's observed metric, None with no samples


# A named tuple rather than a frozen dataclass, as `Ruling`: one is made per canary per sweep
# and per fleet page, and a frozen dataclass's __init__ costs about four times as much.
class _Measure(NamedTuple):
    n: int  # samples that count toward min_samples
    value: float | None  # observed metric, None when n == 0
    upper: float  # one-sided 95% upper bound of the canary's metric (1.0 when unknown)
    bad: float  # failures, or the scores' total shortfall from 1.0
    stable_value: float | None
    compared: bool  # whether the stable side had enough data for the test
    worse: bool  # significantly worse than stable, one-sided at 95%


def wilson_bounds(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) with no trials. Always contains k/n."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Exact at the edges: rounding must not put a perfect canary's upper bound below 1.0.
    lower = 0.0 if successes == 0 else max(0.0, min(p, centre - half))
    upper = 1.0 if successes == n else min(1.0, max(p, centre + half))
    return lower, upper


def _rate_worse(canary: Counts, stable: Counts) -> bool:
    """Pooled two-proportion z-test, one-sided: is the canary's success rate below stable's?"""
    pooled = (canary.successes + stable.successes) / (canary.requests + stable.requests)
    se = math.sqrt(pooled * (1 - pooled) * (1 / canary.requests + 1 / stable.requests))
    # se == 0: every outcome on both sides is the same, so the rates are equal.
    diff = stable.successes / stable.requests - canary.successes / canary.requests
    return se > 0 and diff / se > Z_95


def _mean_se(c: Counts) -> tuple[float | None, float | None]:
    """Mean score and its standard error; the error is None below 2 scores (no variance yet)."""
    if c.score_count == 0:
        return None, None
    mean = c.score_sum / c.score_count
    if c.score_count < 2:
        return mean, None
    # max(0, ...): rounding can make a zero variance slightly negative.
    var = max(0.0, (c.score_sq_sum - c.score_count * mean * mean) / (c.score_count - 1))
    return mean, math.sqrt(var / c.score_count)


def _measure(state: CanaryState, policy: CanaryPolicy) -> _Measure:
    canary, stable = state.canary, state.stable
    if policy.metric == Metric.SUCCESS_RATE:
        n = canary.requests
        value = canary.successes / n if n else None
        stable_value = stable.successes / stable.requests if stable.requests else None
        compared = n > 0 and stable.requests > 0
        worse = compared and _rate_worse(canary, stable)
        _, upper = wilson_bounds(canary.successes, n)
        return _Measure(n, value, upper, n - canary.successes, stable_value, compared, worse)
    # Scores: mean with a normal-approximation bound, Welch's test against stable. Small samples
    # are kept out of both by the n >= 2 guard here and by the min-samples and failure floors.
    n = canary.score_count
    value, se = _mean_se(canary)
    stable_value, stable_se = _mean_se(stable)
    upper = 1.0 if value is None or se is None else min(1.0, max(value, value + Z_95 * se))
    compared = se is not None and stable_se is not None
    worse = False
    if compared and value is not None and stable_value is not None:
        diff = stable_value - value
        se_diff = math.hypot(se or 0.0, stable_se or 0.0)
        # Zero variance on both sides: the scores are constant, so any real gap is significant.
        worse = diff > 1e-9 if se_diff < 1e-12 else diff / se_diff > Z_95
    return _Measure(n, value, upper, n - canary.score_sum, stable_value, compared, worse)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What `decide` weighs, for people to read: the canary's metric with its one-sided 95%
    bounds, and the one-sided 95% test against the stable versions."""

    samples: int  # toward min_samples: requests, or scores
    value: float | None  # None with no samples
    lower: float  # 0.0 when unknown
    upper: float  # 1.0 when unknown
    stable_value: float | None
    compared: bool  # whether the stable side had enough data for the test
    worse: bool  # significantly worse than stable


def evidence(state: CanaryState, policy: CanaryPolicy) -> Evidence:
    """The same measure `decide` computes, with the lower bound too. Pure."""
    m = _measure(state, policy)
    if policy.metric == Metric.SUCCESS_RATE:
        lower, _ = wilson_bounds(state.canary.successes, state.canary.requests)
    else:
        mean, se = _mean_se(state.canary)
        lower = 0.0 if mean is None or se is None else max(0.0, min(mean, mean - Z_95 * se))
    return Evidence(m.n, m.value, lower, m.upper, m.stable_value, m.compared, m.worse)


class Ruling(NamedTuple):
    """Which of `decide`'s rules applies, and what it does, without its sentence: the fleet's
    list shows only the action, and the words of a thousand canaries are work it does not use."""

    action: Action
    next_percent: int | None  # STEP: the next step's percent; PROMOTE: 100; else None
    rule: str  # failing | worse | early_deadline | waiting | passing | late_deadline | inconclusive
    measure: _Measure
    elapsed: float  # seconds into the step (0 when the clock is behind its start)


def decide(state: CanaryState, policy: CanaryPolicy, now: datetime) -> Decision:
    """What the sweep should do with this canary now. Pure and deterministic.

    Raises InvalidInput for an invalid policy, inconsistent counts or naive datetimes.
    """
    ruling = rule(state, policy, now)
    reason = _sentence(ruling, state, policy)
    return Decision(ruling.action, reason, ruling.next_percent, ruling.measure.value)


def rule(state: CanaryState, policy: CanaryPolicy, now: datetime) -> Ruling:
    """`decide` without the sentence: the same checks, the same rules, the same action. Pure.

    Raises InvalidInput for an invalid policy, inconsistent counts or naive datetimes.
    """
    check_policy(policy)
    validate_state(state, now)
    m = _measure(state, policy)
    # A clock behind the step's start (skew between hosts) counts as "just started".
    elapsed = max(0.0, (now - state.step_started_at).total_seconds())
    threshold = policy.threshold

    # 1. Clearly failing -> roll back now, even before the bake time or the minimum samples are
    #    reached: a broken canary should not keep serving users for the rest of its bake. Noise is
    #    kept out by the 95% tests and by the failure floor (see EARLY_ROLLBACK_FAILURES), which
    #    counts failures rather than requests so that more successes never lead to a rollback.
    if m.bad >= min(policy.min_samples, EARLY_ROLLBACK_FAILURES) and m.value is not None:
        if m.upper < threshold:
            return _fail(policy, "failing", m, elapsed)
        if m.worse:
            return _fail(policy, "worse", m, elapsed)

    # 2. Too early to judge: hold (a canary with no data never passes), but not past the deadline.
    if m.n < policy.min_samples or elapsed < policy.bake_seconds:
        if elapsed >= policy.deadline_seconds:
            return _fail(policy, "early_deadline", m, elapsed)
        return Ruling(Action.HOLD, None, "waiting", m, elapsed)

    # 3. Meets the threshold and is not significantly worse than stable -> next step, or 100%.
    #    The observed value (not its lower bound) must meet the threshold: requiring the bound
    #    would stall good canaries near the threshold until the deadline rolled them back.
    assert m.value is not None  # m.n >= min_samples >= 1
    if m.value >= threshold and not m.worse:
        target = next_step(state.traffic_percent, policy.steps)
        action = Action.PROMOTE if target == 100 else Action.STEP
        return Ruling(action, target, "passing", m, elapsed)

    # 4. Inconclusive (below the threshold but not clearly failing, or worse than stable on too
    #    few failures): hold for more data, and roll back once the deadline passes.
    if elapsed >= policy.deadline_seconds:
        return _fail(policy, "late_deadline", m, elapsed)
    return Ruling(Action.HOLD, None, "inconclusive", m, elapsed)


def _fail(policy: CanaryPolicy, name: str, m: _Measure, elapsed: float) -> Ruling:
    """A failing rule: roll back, or hold for an operator when auto-rollback is off."""
    action = Action.ROLLBACK if policy.auto_rollback else Action.HOLD
    return Ruling(action, None, name, m, elapsed)


def _sentence(ruling: Ruling, state: CanaryState, policy: CanaryPolicy) -> str:
    """The sentence the audit trail keeps for `ruling`, from the numbers it was decided on."""
    m, elapsed = ruling.measure, ruling.elapsed
    at, threshold = state.traffic_percent, policy.threshold
    unit = "requests" if policy.metric == Metric.SUCCESS_RATE else "scores"
    name = "success rate" if policy.metric == Metric.SUCCESS_RATE else "mean score"
    seen = f"{name} {m.value:.3f} over {m.n} {unit}" if m.value is not None else ""
    if m.compared:
        vs_stable = f"stable ({m.stable_value:.3f})"
    elif m.stable_value is None:
        vs_stable = "stable (no stable data to compare)"
    else:
        vs_stable = "stable (too few scores to compare)"
    deadline = f"progress deadline of {policy.deadline_seconds:g} s passed"

    if ruling.rule == "passing":
        return (
            f"{seen} meets {threshold:g} and is not worse than {vs_stable}; "
            f"{ruling.action.value} {at}% -> {ruling.next_percent}%"
        )
    if ruling.rule == "failing":
        why = f"its 95% upper bound {m.upper:.3f} is below the threshold {threshold:g}"
        why = f"{seen} is clearly failing: {why}"
    elif ruling.rule == "worse":
        why = f"{seen} is significantly worse than {vs_stable}"
    elif ruling.rule in ("waiting", "early_deadline"):
        baked = (
            f"{elapsed:.0f} of {policy.bake_seconds:g} s baked"
            if elapsed < policy.bake_seconds
            else "bake done"
        )
        progress = f"{m.n} of {policy.min_samples} {unit}, {baked}, at {at}%"
        if ruling.rule == "waiting":
            return f"waiting for data: {progress}"
        why = f"{deadline} with only {progress}"
    else:  # inconclusive, before or past the deadline
        assert m.value is not None
        if m.value >= threshold:
            why = f"{seen} meets {threshold:g} but is significantly worse than {vs_stable}"
        else:
            bound = f"95% upper bound {m.upper:.3f}"
            why = f"{seen} is below {threshold:g} but not clearly failing ({bound})"
        if ruling.rule == "inconclusive":
            return f"{why}; holding at {at}%"
        why = f"{deadline} and {why}"
    # A failing rule's action.
    if policy.auto_rollback:
        return f"{why}; roll back from {at}%"
    return f"{why}; auto-rollback is off, holding at {at}% for an operator"
