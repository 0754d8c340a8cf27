"""The auto-promote sweep: read every live canary, decide each, apply what is not a hold.

A sweep (run by the worker's door, `worker.sweep.run_sweep`, which opens the units of work) has
three phases:

1. `plan`: read every live canary with its counts in two statements, however many canaries there
   are (`canaries.read_live_canaries`), in a short read-only transaction that takes no lock;
2. decide: `analysis.decide` for each, as of `now` (`canaries.assess`); pure;
3. `apply` each step, promotion or rollback in its own unit of work: lock the tenant, re-check
   under the lock that the deployment is still active with auto-promote on, and that its version
   is still in production at the traffic and with the step start that were read, and that the
   tenant was not paused since. If anything moved (an operator's rollback, promotion or pause,
   another sweep's step), the action is skipped: the
   state it was decided on is gone, and the next sweep decides afresh. This is what makes two
   beats, or a slow sweep overlapping the next one, act once: the first to take the lock changes
   the traffic or the status (and restarts the step), so the second finds its read stale.

Then retention archives deprecated versions beyond each tenant's `keep_deprecated`, one unit of
work per tenant (`registry.canary.retention`). One canary's or tenant's failure is reported in
the sweep's report (`failed`, `SweepReport.retention_errors`); the others still proceed.

Applying, through `registry.versions` (one audit event each, actor "auto", the decision's reason):
- step → `promote(next step)`, action "auto_step"; the version's step restarts;
- promote → `promote(100)`, action "auto_promote"; the deployment becomes `promoted`;
- rollback → when the canary is the tenant's newest production version, `versions.rollback`
  (action "auto_rollback"): it leaves production and the others are rescaled to 100, i.e. the
  split before the canary, in proportion. When a newer version also serves (two canaries at
  once), `rollback` would take out that newer one, so only the failing canary is taken out and
  the rest rescaled, with the same action and audit. Either way the deployment becomes
  `rolled_back` and the version is never restored by a later rollback.
The deployment row keeps the reason of the last decision applied to it (`Deployment.reason`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from registry import clock, versions
from registry.canary.analysis import Action
from registry.canary.canaries import Assessment, LiveCanary, assess, read_live_canaries
from registry.db import lock_tenant
from registry.models import (
    Deployment,
    DeploymentPolicy,
    DeploymentStatus,
    ModelVersion,
    VersionStatus,
)
from registry.notify import notices

ACTOR = "auto"
AUDIT_ACTIONS = {
    Action.STEP: "auto_step",
    Action.PROMOTE: "auto_promote",
    Action.ROLLBACK: "auto_rollback",
}


@dataclass(frozen=True)
class SweepItem:
    """One canary's outcome in a sweep."""

    tenant: str
    version: int
    traffic_percent: int
    action: str  # hold | step | promote | rollback | error
    reason: str
    applied: bool = False
    skipped: str | None = None  # why a decided action was not applied (the state moved)
    error: str | None = None  # why applying failed


@dataclass
class SweepReport:
    started_at: datetime
    canaries: int = 0
    items: list[SweepItem] = field(default_factory=list)
    archived: dict[str, list[int]] = field(default_factory=dict)
    retention_errors: dict[str, str] = field(default_factory=dict)  # tenant -> why it failed
    duration_seconds: float = 0.0

    def decisions(self) -> Counter[str]:
        return Counter(item.action for item in self.items)

    def applied(self) -> list[SweepItem]:
        return [item for item in self.items if item.applied]

    def errors(self) -> list[SweepItem]:
        return [item for item in self.items if item.error or item.action == "error"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
            "canaries": self.canaries,
            "decisions": dict(self.decisions()),
            "applied": [asdict(item) for item in self.applied()],
            "skipped": [asdict(item) for item in self.items if item.skipped],
            "errors": [asdict(item) for item in self.errors()],
            "archived": self.archived,
            "retention_errors": self.retention_errors,
            "duration_seconds": round(self.duration_seconds, 4),
        }


def plan(session: Session, now: datetime) -> list[Assessment]:
    """Phases 1 and 2: read every live canary of a tenant not paused (two statements, no lock)
    and decide each as of `now`. Run it in a short unit of work of its own: the read holds no
    lock, and ending the transaction ends its snapshot."""
    return assess([c for c in read_live_canaries(session) if not c.paused], now)


def item_of(assessment: Assessment) -> SweepItem:
    """The report's line for a canary, before anything is applied."""
    canary = assessment.canary
    return SweepItem(
        canary.tenant,
        canary.version,
        canary.traffic_percent,
        assessment.action,
        assessment.reason,
    )


def needs_applying(assessment: Assessment) -> bool:
    """False for a hold or an undecidable canary: those are only reported."""
    decision = assessment.decision
    return decision is not None and decision.action is not Action.HOLD


def apply(session: Session, assessment: Assessment) -> SweepItem:
    """Phase 3 for one canary, in the caller's unit of work: lock the tenant and, if the state
    the decision was made on still holds, apply it (one audit event, actor "auto"); otherwise
    report it skipped with the reason. A hold is only reported. Raises what the change raises
    (the caller rolls back and reports it with `failed`). Only flushes."""
    item = item_of(assessment)
    if not needs_applying(assessment):
        return item
    canary = assessment.canary
    lock_tenant(session, canary.tenant_id)
    moved = _moved(session, canary)
    if moved is not None:
        return _replace(item, skipped=moved)
    _act(session, canary, assessment)
    return _replace(item, applied=True)


def failed(assessment: Assessment, error: BaseException) -> SweepItem:
    """The report's line for a canary whose action failed (its unit of work rolled back)."""
    return _replace(item_of(assessment), error=f"{type(error).__name__}: {error}"[:500])


def _replace(item: SweepItem, **changes: Any) -> SweepItem:
    return SweepItem(**{**asdict(item), **changes})


def _moved(session: Session, canary: LiveCanary) -> str | None:
    """Why the state the decision was made on no longer holds, or None if it still does.
    Call with the tenant locked: what it reads cannot change until the transaction ends."""
    deployment = session.get(Deployment, canary.deployment_id, populate_existing=True)
    version = session.get(ModelVersion, canary.version_id, populate_existing=True)
    if deployment is None or version is None:
        return "the deployment is gone"
    if deployment.status != DeploymentStatus.ACTIVE:
        return f"the deployment is {deployment.status} now"
    if not deployment.auto_promote:
        return "auto-promote was turned off for this deployment"
    if (
        version.status != VersionStatus.PRODUCTION
        or version.traffic_percent != canary.traffic_percent
    ):
        return (
            f"v{version.version} is {version.status} at {version.traffic_percent}% now, "
            f"not at {canary.traffic_percent}%"
        )
    if deployment.step_started_at != canary.step_started_at:
        return "its step restarted since it was read"
    policy = session.get(DeploymentPolicy, canary.tenant_id, populate_existing=True)
    if policy is not None and policy.paused:
        # Paused after the plan was read: an operator's pause wins over a decision made before it.
        return (
            f"auto-promotion was paused since it was read ({policy.paused_reason or 'no reason'})"
        )
    return None


def _act(session: Session, canary: LiveCanary, assessment: Assessment) -> versions.Change:
    decision = assessment.decision
    assert decision is not None
    reason, audit_action = decision.reason, AUDIT_ACTIONS[decision.action]
    if decision.action in (Action.STEP, Action.PROMOTE):
        assert decision.next_percent is not None
        change = versions.promote(
            session,
            canary.tenant_id,
            canary.version,
            decision.next_percent,
            actor=ACTOR,
            reason=reason,
            action=audit_action,
        )
    else:
        # Only this canary leaves, even when a newer version also serves; the rest is rescaled.
        change = versions.rollback(
            session,
            canary.tenant_id,
            version=canary.version,
            actor=ACTOR,
            reason=reason,
            action=audit_action,
        )
    deployment = session.get_one(Deployment, canary.deployment_id)
    deployment.reason = reason
    deployment.updated_at = clock.now()
    session.flush()
    notices.canary_decided(session, assessment, change)
    return change
