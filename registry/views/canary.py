"""One live canary, explained: what it has seen since its step began, the bounds and the test
the sweep applies, the limits it must reach, and what the next sweep will do and why — the same
read (`read_live_canaries`), decision (`assess`) and words as `ftdeploy status`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from registry.canary.analysis import Action, CanaryState, Counts, Evidence, Metric, evidence
from registry.canary.canaries import Assessment, samples

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
        """A few words for the fleet's list."""
        if self.action == "error":
            return "cannot decide"
        if self.action in ("step", "promote"):
            return f"passing: next {self.next_percent}%"
        if self.action == "rollback":
            return "failing: rollback next"
        if self.near_deadline:
            return "holding, near its deadline"
        return "holding for data" if self.waiting_for_data else "holding"


def panel(assessment: Assessment, now: datetime, *, explain: bool = True) -> CanaryPanel:
    """The canary as the page explains it; `explain=False` leaves out the evidence (bounds and
    test), which only the tenant page shows."""
    canary, policy, decision = assessment.canary, assessment.canary.policy, assessment.decision
    in_step = max(0.0, (now - canary.step_started_at).total_seconds())
    proof: Evidence | None = None
    steps = step_number = deadline_at = bake_left = deadline_left = None
    near = waiting = False
    seen = samples(canary)
    if policy is not None:
        # Counts that decide() refused have no evidence to show: the panel shows its error.
        if decision is not None and explain:
            state = CanaryState(
                canary.traffic_percent, canary.step_started_at, canary.canary, canary.stable
            )
            proof = evidence(state, policy)
        steps = policy.steps
        if canary.traffic_percent in steps:
            step_number = steps.index(canary.traffic_percent) + 1
        bake_left = max(0.0, policy.bake_seconds - in_step)
        deadline_at = canary.step_started_at + timedelta(seconds=policy.deadline_seconds)
        deadline_left = max(0.0, policy.deadline_seconds - in_step)
        holding = decision is not None and decision.action is Action.HOLD
        waiting = holding and (seen < policy.min_samples or bake_left > 0)
        near = holding and deadline_left <= NEAR_DEADLINE_SHARE * policy.deadline_seconds
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


def metric_name(metric: str | None) -> str:
    return "mean score" if metric == Metric.SCORE else "success rate"
