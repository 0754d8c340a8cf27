"""The canary decision: each rule with concrete numbers, then properties over random inputs."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from registry.canary.analysis import (
    Action,
    CanaryPolicy,
    CanaryState,
    Counts,
    Decision,
    Metric,
    decide,
    wilson_bounds,
)
from registry.canary.checks import next_step, parse_steps, validate_policy
from registry.errors import InvalidInput

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BAKE, DEADLINE = 600.0, 3600.0


def policy(**overrides: Any) -> CanaryPolicy:
    fields: dict[str, Any] = dict(
        metric=Metric.SUCCESS_RATE,
        threshold=0.95,
        min_samples=100,
        bake_seconds=BAKE,
        steps=(10, 25, 50, 100),
        deadline_seconds=DEADLINE,
        auto_rollback=True,
    )
    return CanaryPolicy(**(fields | overrides))


def run(
    canary: Counts,
    stable: Counts = Counts(),  # noqa: B008 - frozen, safe as a default
    *,
    at: int = 10,
    elapsed: float = BAKE + 1,
    **policy_overrides: Any,
) -> Decision:
    state = CanaryState(at, T0, canary, stable)
    return decide(state, policy(**policy_overrides), T0 + timedelta(seconds=elapsed))


def scores(*values: float) -> Counts:
    return Counts(
        score_count=len(values),
        score_sum=math.fsum(values),
        score_sq_sum=math.fsum(v * v for v in values),
    )


# --- steps ----------------------------------------------------------------------------------


def test_parse_steps_accepts_and_completes() -> None:
    assert parse_steps("10,25,50,100") == (10, 25, 50, 100)
    assert parse_steps(" 5, 20 ,50") == (5, 20, 50, 100)
    assert parse_steps("100") == (100,)


@pytest.mark.parametrize(
    "text", ["", "ten", "0,100", "50,25,100", "10,10,100", "10,101", "10,,100", "-5,100", "1.5"]
)
def test_parse_steps_rejects(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_steps(text)
    assert caught.value.field == "steps"


@pytest.mark.parametrize(
    ("current", "expected"), [(5, 10), (10, 25), (30, 50), (50, 100), (100, 100)]
)
def test_next_step(current: int, expected: int) -> None:
    assert next_step(current, (10, 25, 50, 100)) == expected


# --- policy validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metric", "p99_latency"),
        ("threshold", -0.01),
        ("threshold", 1.5),
        ("threshold", math.nan),
        ("min_samples", 0),
        ("min_samples", 2.5),
        ("bake_seconds", -1),
        ("bake_seconds", math.inf),
        ("steps", (10, 50)),
        ("steps", (50, 25, 100)),
        ("steps", ()),
        ("deadline_seconds", BAKE),  # a deadline within the bake time fails every canary
        ("auto_rollback", "yes"),
    ],
)
def test_validate_policy_rejects(field: str, value: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_policy(policy(**{field: value}))
    assert caught.value.field == field
    with pytest.raises(InvalidInput):  # decide refuses it too
        decide(CanaryState(10, T0, Counts(200, 200), Counts()), policy(**{field: value}), T0)


def test_validate_policy_accepts_the_defaults() -> None:
    validate_policy(policy())
    validate_policy(policy(metric="score", threshold=0, bake_seconds=0, min_samples=1))


@pytest.mark.parametrize(
    "state",
    [
        CanaryState(10, T0, Counts(10, 11), Counts()),  # more successes than requests
        CanaryState(10, T0, Counts(), Counts(-1, 0)),
        CanaryState(10, T0, Counts(score_count=2, score_sum=2.5, score_sq_sum=2.5), Counts()),
        CanaryState(10, T0, Counts(score_count=2, score_sum=1.0, score_sq_sum=0.1), Counts()),
        CanaryState(0, T0, Counts(), Counts()),
        CanaryState(100, T0, Counts(), Counts()),
        CanaryState(10, T0.replace(tzinfo=None), Counts(), Counts()),
    ],
)
def test_decide_rejects_inconsistent_state(state: CanaryState) -> None:
    with pytest.raises(InvalidInput):
        decide(state, policy(), T0 + timedelta(hours=1))


# --- rule 1: clearly failing rolls back, even early -----------------------------------------


def test_zero_of_fifty_rolls_back_before_bake_and_min_samples() -> None:
    decision = run(Counts(50, 0), elapsed=60)
    assert decision.action == Action.ROLLBACK
    assert decision.next_percent is None
    assert decision.metric_value == 0.0
    assert "95% upper bound 0.051 is below the threshold 0.95" in decision.reason
    assert decision.reason.endswith("roll back from 10%")


def test_rollback_needs_five_failures() -> None:
    # 0/4 is below 0.95 at 95% confidence, but four requests are too few to act on.
    assert run(Counts(4, 0), elapsed=60).action == Action.HOLD
    assert run(Counts(5, 0), elapsed=60).action == Action.ROLLBACK
    # ... unless the operator asked for fewer samples than that.
    assert run(Counts(2, 0), elapsed=60, min_samples=2).action == Action.ROLLBACK


def test_significantly_worse_than_stable_rolls_back_even_above_threshold() -> None:
    decision = run(Counts(1000, 955), Counts(10_000, 9950))
    assert decision.action == Action.ROLLBACK
    assert "success rate 0.955 over 1000 requests" in decision.reason
    assert "significantly worse than stable (0.995)" in decision.reason


def test_failing_canary_holds_when_auto_rollback_is_off() -> None:
    decision = run(Counts(50, 0), auto_rollback=False)
    assert decision.action == Action.HOLD
    assert "clearly failing" in decision.reason
    assert "auto-rollback is off" in decision.reason


# --- rule 2: too early to judge -------------------------------------------------------------


def test_no_data_holds() -> None:
    decision = run(Counts(), elapsed=BAKE + 1)
    assert decision == Decision(
        Action.HOLD,
        "waiting for data: 0 of 100 requests, bake done, at 10%",
        None,
        None,
    )


def test_below_min_samples_holds_even_when_perfect() -> None:
    assert run(Counts(99, 99)).action == Action.HOLD


def test_before_bake_holds_even_when_perfect() -> None:
    decision = run(Counts(5000, 5000), elapsed=BAKE - 1)
    assert decision.action == Action.HOLD
    assert "5000 of 100 requests, 599 of 600 s baked, at 10%" in decision.reason


def test_clock_behind_step_start_counts_as_just_started() -> None:
    decision = run(Counts(5000, 5000), elapsed=-30)
    assert decision.action == Action.HOLD
    assert "0 of 600 s baked" in decision.reason


def test_past_deadline_with_too_few_requests_rolls_back() -> None:
    decision = run(Counts(42, 42), elapsed=DEADLINE)
    assert decision.action == Action.ROLLBACK
    assert decision.reason == (
        "progress deadline of 3600 s passed with only 42 of 100 requests, bake done, at 10%; "
        "roll back from 10%"
    )
    held = run(Counts(), elapsed=DEADLINE, auto_rollback=False)
    assert held.action == Action.HOLD
    assert "auto-rollback is off" in held.reason


# --- rule 3: meets the threshold and not worse -> step or promote ---------------------------


def test_step_with_concrete_reason() -> None:
    decision = run(Counts(412, 396), Counts(1000, 958), at=25)
    assert decision == Decision(
        Action.STEP,
        "success rate 0.961 over 412 requests meets 0.95 and is not worse than stable (0.958); "
        "step 25% -> 50%",
        50,
        396 / 412,
    )


def test_last_step_promotes() -> None:
    decision = run(Counts(200, 199), Counts(2000, 1990), at=50)
    assert (decision.action, decision.next_percent) == (Action.PROMOTE, 100)
    assert decision.reason.endswith("promote 50% -> 100%")
    assert run(Counts(200, 199), at=10, steps=(10, 100)).action == Action.PROMOTE


def test_without_stable_data_the_threshold_alone_decides() -> None:
    decision = run(Counts(100, 100))
    assert (decision.action, decision.next_percent) == (Action.STEP, 25)
    assert "no stable data to compare" in decision.reason


def test_off_step_percent_goes_to_the_next_step_above() -> None:
    assert run(Counts(100, 100), at=30).next_percent == 50


# --- rule 4: inconclusive -> hold, then roll back at the deadline ---------------------------


def test_below_threshold_but_not_clearly_failing_holds_then_rolls_back() -> None:
    decision = run(Counts(200, 188))  # 0.94, upper bound above 0.95
    assert decision.action == Action.HOLD
    assert "0.940 over 200 requests is below 0.95 but not clearly failing" in decision.reason
    late = run(Counts(200, 188), elapsed=DEADLINE + 1)
    assert late.action == Action.ROLLBACK
    assert late.reason.startswith("progress deadline of 3600 s passed and success rate 0.940")


def test_worse_than_stable_on_few_failures_holds_instead_of_passing() -> None:
    decision = run(Counts(100, 97), Counts(100_000, 99_990))
    assert decision.action == Action.HOLD
    assert "meets 0.95 but is significantly worse than stable (1.000)" in decision.reason


# --- the score metric -----------------------------------------------------------------------


def test_score_clearly_failing_rolls_back() -> None:
    decision = run(scores(*[0.4] * 25, *[0.6] * 25), metric=Metric.SCORE, threshold=0.8)
    assert decision.action == Action.ROLLBACK
    assert decision.metric_value == pytest.approx(0.5)
    assert "mean score 0.500 over 50 scores is clearly failing" in decision.reason


def test_score_meeting_threshold_steps() -> None:
    canary = scores(*[0.9] * 80, *[0.8] * 20)  # mean 0.88
    stable = scores(*[0.9] * 700, *[0.8] * 300)  # mean 0.87
    decision = run(canary, stable, metric=Metric.SCORE, threshold=0.85)
    assert (decision.action, decision.next_percent) == (Action.STEP, 25)
    assert "mean score 0.880 over 100 scores meets 0.85" in decision.reason


def test_score_worse_than_stable_by_welch_rolls_back() -> None:
    canary = scores(*[0.8] * 100, *[0.9] * 100)  # 0.85
    stable = scores(*[0.9] * 1000, *[1.0] * 1000)  # 0.95
    decision = run(canary, stable, metric=Metric.SCORE, threshold=0.8)
    assert decision.action == Action.ROLLBACK
    assert "significantly worse than stable (0.950)" in decision.reason


def test_score_constant_on_both_sides_compares_the_means() -> None:
    # No variance anywhere: the test statistic is undefined, but a real gap is not noise.
    decision = run(scores(*[0.5] * 100), scores(*[1.0] * 100), metric=Metric.SCORE, threshold=0.4)
    assert decision.action == Action.ROLLBACK
    assert "significantly worse than stable (1.000)" in decision.reason
    same = run(scores(*[0.5] * 100), scores(*[0.5] * 100), metric=Metric.SCORE, threshold=0.4)
    assert same.action == Action.STEP


def test_score_zero_variance_and_tiny_samples() -> None:
    perfect = run(scores(*[1.0] * 10), metric=Metric.SCORE, min_samples=10)
    assert perfect.action == Action.STEP
    hopeless = run(scores(*[0.0] * 10), metric=Metric.SCORE, threshold=0.5)
    assert hopeless.action == Action.ROLLBACK
    # One score has no variance: never "clearly failing", only inconclusive.
    single = run(scores(0.0), metric=Metric.SCORE, min_samples=1)
    assert single.action == Action.HOLD
    assert "95% upper bound 1.000" in single.reason


def test_score_against_a_single_stable_score_uses_the_threshold_alone() -> None:
    decision = run(scores(*[1.0] * 100), scores(0.0), metric=Metric.SCORE, threshold=0.9)
    assert decision.action == Action.STEP
    assert "not worse than stable (too few scores to compare)" in decision.reason


def test_requests_without_scores_are_no_score_data() -> None:
    decision = run(Counts(500, 500), metric=Metric.SCORE)
    assert (decision.action, decision.metric_value) == (Action.HOLD, None)
    assert "0 of 100 scores" in decision.reason


# --- Wilson ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "n"), [(1, 10), (5, 10), (9, 10), (396, 412), (3, 1000)])
def test_wilson_bounds_solve_the_score_equation(k: int, n: int) -> None:
    # The Wilson bounds are the p with (k/n - p)^2 = z^2 p (1 - p) / n.
    for bound in wilson_bounds(k, n):
        assert n * (k / n - bound) ** 2 == pytest.approx(1.645**2 * bound * (1 - bound))


def test_wilson_edges_are_exact() -> None:
    assert wilson_bounds(0, 0) == (0.0, 1.0)
    assert wilson_bounds(7, 7)[1] == 1.0
    assert wilson_bounds(0, 7)[0] == 0.0


# --- properties -----------------------------------------------------------------------------


@st.composite
def rate_counts(draw: st.DrawFn, max_requests: int = 400) -> Counts:
    requests = draw(st.integers(0, max_requests))
    failures = draw(st.integers(0, requests) | st.integers(0, min(requests, 12)))
    return Counts(requests, requests - failures)


@st.composite
def score_counts(draw: st.DrawFn) -> Counts:
    values = draw(st.lists(st.floats(0, 1) | st.sampled_from([0.0, 0.5, 1.0]), max_size=60))
    return scores(*values)


policies = st.builds(
    CanaryPolicy,
    metric=st.sampled_from(Metric),
    threshold=st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]) | st.floats(0, 1),
    min_samples=st.integers(1, 300) | st.integers(1, 12),
    bake_seconds=st.floats(0, 3600),
    steps=st.sampled_from([(10, 25, 50, 100), (5, 100), (1, 2, 5, 10, 50, 100), (100,)]),
    deadline_seconds=st.floats(1, 7200),
    auto_rollback=st.booleans(),
).map(lambda p: dataclasses.replace(p, deadline_seconds=p.bake_seconds + p.deadline_seconds))
rate_policies = policies.map(lambda p: dataclasses.replace(p, metric=Metric.SUCCESS_RATE))
percents = st.integers(1, 99)
elapsed_seconds = st.floats(-60, 12_000)
sides = rate_counts(max_requests=2000) | score_counts() | st.just(Counts())


def at(seconds: float) -> tuple[datetime, float]:
    """The time `seconds` after T0 and the elapsed seconds decide will see: datetimes keep
    microseconds, so the two can differ in the last digits, and a clock behind T0 counts as 0."""
    now = T0 + timedelta(seconds=seconds)
    return now, max(0.0, (now - T0).total_seconds())


@given(stable=sides, p=policies, percent=percents, seconds=elapsed_seconds,
       requests=st.integers(0, 9))  # fmt: skip
def test_no_data_never_passes(
    stable: Counts, p: CanaryPolicy, percent: int, seconds: float, requests: int
) -> None:
    # No canary outcomes at all, or (for scores) requests whose scores never arrived.
    canary = Counts(requests, requests) if p.metric == Metric.SCORE else Counts()
    now, elapsed = at(seconds)
    decision = decide(CanaryState(percent, T0, canary, stable), p, now)
    assert decision.action in (Action.HOLD, Action.ROLLBACK)
    assert decision.metric_value is None
    past_deadline = elapsed >= p.deadline_seconds
    assert (decision.action == Action.ROLLBACK) == (past_deadline and p.auto_rollback)


@settings(max_examples=400)
@given(p=rate_policies, stable=rate_counts(2000), percent=percents, share=st.floats(0, 1.5),
       flip=st.booleans(), data=st.data())  # fmt: skip
def test_more_successes_never_cause_a_rollback(
    p: CanaryPolicy, stable: Counts, percent: int, share: float, flip: bool, data: st.DataObject
) -> None:
    # Request counts just below the gates (min samples, a quarter of it, ten) are where a rule
    # that counted requests instead of failures would turn "hold" into "rollback".
    near_gates = st.sampled_from([p.min_samples - 1, p.min_samples // 4 - 1, 9, 4])
    requests = max(0, data.draw(st.integers(0, 400) | near_gates))
    failures = data.draw(st.integers(0, requests) | st.integers(0, min(requests, 12)))
    canary = Counts(requests, requests - failures)
    if flip:  # turn one failure into a success
        assume(canary.successes < canary.requests)
        better = Counts(canary.requests, canary.successes + 1)
    else:  # one more successful request
        better = Counts(canary.requests + 1, canary.successes + 1)
    now, _ = at(share * p.deadline_seconds)  # mostly before the deadline, where holds happen
    before = decide(CanaryState(percent, T0, canary, stable), p, now)
    after = decide(CanaryState(percent, T0, better, stable), p, now)
    if before.action != Action.ROLLBACK:
        assert after.action != Action.ROLLBACK, (before, after)
    if before.action in (Action.STEP, Action.PROMOTE):
        assert (after.action, after.next_percent) == (before.action, before.next_percent)


@given(canary=rate_counts() | score_counts(), stable=sides, p=policies, percent=percents,
       seconds=elapsed_seconds)  # fmt: skip
def test_too_early_never_passes(
    canary: Counts, stable: Counts, p: CanaryPolicy, percent: int, seconds: float
) -> None:
    samples = canary.requests if p.metric == Metric.SUCCESS_RATE else canary.score_count
    now, elapsed = at(seconds)
    assume(elapsed < p.bake_seconds or samples < p.min_samples)
    decision = decide(CanaryState(percent, T0, canary, stable), p, now)
    assert decision.action not in (Action.STEP, Action.PROMOTE)


@given(canary=rate_counts() | score_counts(), stable=sides, p=policies, percent=percents,
       extra=st.floats(0, 10_000))  # fmt: skip
def test_past_deadline_with_too_little_data_rolls_back(
    canary: Counts, stable: Counts, p: CanaryPolicy, percent: int, extra: float
) -> None:
    samples = canary.requests if p.metric == Metric.SUCCESS_RATE else canary.score_count
    assume(samples < p.min_samples)
    now, elapsed = at(p.deadline_seconds + extra)
    assume(elapsed >= p.deadline_seconds)
    decision = decide(CanaryState(percent, T0, canary, stable), p, now)
    assert decision.action == (Action.ROLLBACK if p.auto_rollback else Action.HOLD)


@given(canary=rate_counts() | score_counts(), stable=sides, p=policies, percent=percents,
       seconds=elapsed_seconds)  # fmt: skip
def test_decisions_are_deterministic_and_well_formed(
    canary: Counts, stable: Counts, p: CanaryPolicy, percent: int, seconds: float
) -> None:
    now, _ = at(seconds)
    first = decide(CanaryState(percent, T0, canary, stable), p, now)
    copies = CanaryState(percent, T0, canary._replace(), stable._replace())
    assert decide(copies, dataclasses.replace(p), now) == first
    assert first.reason
    if first.action == Action.PROMOTE:
        assert first.next_percent == 100
    elif first.action == Action.STEP:
        assert first.next_percent in p.steps
        assert percent < first.next_percent < 100
    else:
        assert first.next_percent is None
    if first.action == Action.ROLLBACK:
        assert p.auto_rollback


@given(n=st.integers(0, 100_000), data=st.data())
def test_wilson_bounds_are_probabilities_around_the_rate(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    lower, upper = wilson_bounds(k, n)
    assert 0.0 <= lower <= upper <= 1.0
    if n:
        assert lower <= k / n <= upper
