"""One live canary, explained: what it has seen since its step began, the bounds and the test
the sweep applies, the limits it must reach, and what the next sweep will do and why — the same
read (`read_live_canaries`), decision (`assess`) and words as `ftdeploy status`. The fleet's
list shows less of each canary (`FleetCanary`): the same decision (`ruling`), without its words."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from registry.canary.analysis import (
    Action,
    CanaryPolicy,
    CanaryState,
    Counts,
    Evidence,
    Metric,
    evidence,
)
from registry.canary.canaries import Assessment, LiveCanary, ruling, samples

# A holding canary within this share of its progress deadline needs an operator's eye.
NEAR_DEADLINE_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class CanaryPanel:
    tenant: str
    version: int
    traffic_percent: int
    steps: tuple[int, ...] | None
    step_number: int | None  # 1-based position of the current percent among the steps
    step_started_at: datetime
    metric: str | None
    canary: Counts
    stable: Counts
    evidence: Evidence | None
    samples: int
    min_samples: int | None
    threshold: float | None
    bake_seconds: float | None
    bake_left_seconds: float | None
    deadline_at: datetime | None
    deadline_left_seconds: float | None
    action: str  # hold | step | promote | rollback | error
    next_percent: int | None
    reason: str  # the sweep's own sentence
    waiting_for_data: bool
    near_deadline: bool

    @property
    def state(self) -> str:
        """A few words on what the next sweep will do (the fleet's list shows the same)."""
        return _state(self.action, self.next_percent, self.near_deadline, self.waiting_for_data)


class FleetCanary(NamedTuple):
    """A canary as the fleet's list shows it: where it stands and what the next sweep will do.
    No counts, evidence or sentence (the tenant page's `CanaryPanel` has them): the fleet shows
    a thousand of these, and it only needs these few fields (a named tuple: a frozen
    dataclass's __init__ costs about four times as much)."""

    version: int
    traffic_percent: int
    steps: tuple[int, ...] | None
    step_number: int | None
    action: str  # hold | step | promote | rollback | error
    next_percent: int | None
    waiting_for_data: bool
    near_deadline: bool

    @property
    def state(self) -> str:
        return _state(self.action, self.next_percent, self.near_deadline, self.waiting_for_data)


def _state(action: str, next_percent: int | None, near_deadline: bool, waiting: bool) -> str:
    if action == "error":
        return "cannot decide"
    if action in ("step", "promote"):
        return f"passing: next {next_percent}%"
    if action == "rollback":
        return "failing: rollback next"
    if near_deadline:
        return "holding, near its deadline"
    return "holding for data" if waiting else "holding"


def panel(assessment: Assessment, now: datetime) -> CanaryPanel:
    """The canary as the tenant page explains it."""
    canary, policy, decision = assessment.canary, assessment.canary.policy, assessment.decision
    in_step = max(0.0, (now - canary.step_started_at).total_seconds())
    proof: Evidence | None = None
    steps = step_number = deadline_at = bake_left = deadline_left = None
    near = waiting = False
    seen = samples(canary)
    if policy is not None:
        # Counts that decide() refused have no evidence to show: the panel shows its error.
        if decision is not None:
            state = CanaryState(
                canary.traffic_percent, canary.step_started_at, canary.canary, canary.stable
            )
            proof = evidence(state, policy)
        steps = policy.steps
        step_number = _step_number(canary.traffic_percent, steps)
        bake_left = max(0.0, policy.bake_seconds - in_step)
        deadline_at = canary.step_started_at + timedelta(seconds=policy.deadline_seconds)
        deadline_left = max(0.0, policy.deadline_seconds - in_step)
        holding = decision is not None and decision.action is Action.HOLD
        waiting, near = _holding(policy, holding, seen, in_step)
    return CanaryPanel(
        tenant=canary.tenant,
        version=canary.version,
        traffic_percent=canary.traffic_percent,
        steps=steps,
        step_number=step_number,
        step_started_at=canary.step_started_at,
        metric=policy.metric.value if policy else None,
        canary=canary.canary,
        stable=canary.stable,
        evidence=proof,
        samples=seen,
        min_samples=policy.min_samples if policy else None,
        threshold=policy.threshold if policy else None,
        bake_seconds=policy.bake_seconds if policy else None,
        bake_left_seconds=bake_left,
        deadline_at=deadline_at,
        deadline_left_seconds=deadline_left,
        action=assessment.action,
        next_percent=decision.next_percent if decision else None,
        reason=assessment.reason,
        waiting_for_data=waiting,
        near_deadline=near,
    )


def fleet_canary(canary: LiveCanary, now: datetime) -> FleetCanary:
    """The canary as the fleet lists it: the same decision as `panel`'s, without its words."""
    policy = canary.policy
    decided = ruling(canary, now)
    if policy is None or decided is None:
        steps = policy.steps if policy is not None else None
        return FleetCanary(
            canary.version,
            canary.traffic_percent,
            steps,
            _step_number(canary.traffic_percent, steps) if steps else None,
            "error",
            None,
            False,
            False,
        )
    holding = decided.action is Action.HOLD
    waiting, near = _holding(policy, holding, samples(canary), decided.elapsed)
    return FleetCanary(
        canary.version,
        canary.traffic_percent,
        policy.steps,
        _step_number(canary.traffic_percent, policy.steps),
        decided.action.value,
        decided.next_percent,
        waiting,
        near,
    )


def _step_number(percent: int, steps: tuple[int, ...]) -> int | None:
    """The 1-based position of `percent` among the steps (None between them)."""
    return steps.index(percent) + 1 if percent in steps else None


def _holding(policy: CanaryPolicy, holding: bool, seen: int, in_step: float) -> tuple[bool, bool]:
    """Whether a holding canary waits for data (samples or bake time), and whether it is near
    its deadline."""
    if not holding:
        return False, False
    waiting = seen < policy.min_samples or policy.bake_seconds - in_step > 0
    deadline_left = max(0.0, policy.deadline_seconds - in_step)
    near = deadline_left <= NEAR_DEADLINE_SHARE * policy.deadline_seconds
    return waiting, near


def metric_name(metric: str | None) -> str:
    return "mean score" if metric == Metric.SCORE else "success rate"
