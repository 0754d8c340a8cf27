"""What each notifiable change says: one function per kind of change, called once from where the
change happens (in its transaction), building the event's data and emitting it.

Hooks (one call each):
- `registry.deployments.deploy` and `_decided` → `deployment_decided` (applied, staged,
  rejected, awaiting evaluation);
- `registry.canary.sweep._act` → `canary_decided` (stepped, promoted, rolled back), and
  `worker.sweep.run_sweep` → `canaries_holding` (held past a share of the progress deadline, told
  once per step);
- `registry.operations.run_operation` → `operation_finished` (`operation.<final status>`);
- `registry.jobs.pipeline.fail_job` → `job_failed`;
- tenant pause and resume, when they exist → `tenant_paused` / `tenant_resumed`.

Every data carries `tenant` ({id, slug}); traffic changes carry `version`, `split_before`,
`split_after` ({"<version>": percent}), `actor` and `reason` as in the audit trail.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import clock, traffic
from registry.canary.analysis import Z_95, Action, Counts, Metric, wilson_bounds
from registry.canary.canaries import Assessment, samples
from registry.models import (
    Deployment,
    DeploymentStatus,
    EventState,
    FinetuningRun,
    JobEvent,
    ModelVersion,
    Operation,
    Tenant,
    TrafficEvent,
)
from registry.notify.outbox import emit
from registry.notify.types import EventType
from registry.settings import get_settings
from registry.versions import Change, current_split

_DEPLOYMENT_TYPES = {
    DeploymentStatus.ACTIVE: EventType.DEPLOYMENT_APPLIED,
    DeploymentStatus.PROMOTED: EventType.DEPLOYMENT_APPLIED,
    DeploymentStatus.STAGED: EventType.DEPLOYMENT_STAGED,
    DeploymentStatus.REJECTED: EventType.DEPLOYMENT_REJECTED,
    DeploymentStatus.AWAITING_EVALUATION: EventType.DEPLOYMENT_AWAITING_EVALUATION,
}
_CANARY_TYPES = {
    Action.STEP: EventType.CANARY_STEPPED,
    Action.PROMOTE: EventType.CANARY_PROMOTED,
    Action.ROLLBACK: EventType.CANARY_ROLLED_BACK,
}


def tenant_data(session: Session, tenant_id: uuid.UUID | None) -> dict[str, str] | None:
    tenant = session.get(Tenant, tenant_id) if tenant_id is not None else None
    return {"id": str(tenant.id), "slug": tenant.slug} if tenant else None


def deployment_decided(
    session: Session, deployment: Deployment, *, change: Change | None = None
) -> None:
    """The deployment was decided (or re-decided): applied, staged, rejected or waiting for an
    evaluation. Once per deployment and outcome, however often a redelivery decides it again.
    `change`: the traffic change the decision just made (`versions.check_and_audit`), if any."""
    kind = _DEPLOYMENT_TYPES.get(DeploymentStatus(deployment.status))
    if kind is None:
        return
    session.flush()
    version = session.get(ModelVersion, deployment.version_id) if deployment.version_id else None
    run = session.get(FinetuningRun, deployment.run_id)
    data: dict[str, Any] = {
        "tenant": tenant_data(session, deployment.tenant_id),
        "deployment": {
            "id": str(deployment.id),
            "status": deployment.status,
            "strategy": deployment.strategy,
            "auto_promote": deployment.auto_promote,
            "job_id": run.openai_job_id if run else None,
        },
        "version": version.version if version else None,
        "model_id": version.model_id if version else None,
        "traffic_percent": version.traffic_percent if version else 0,
        "reason": deployment.reason,
    }
    if version is not None and change is not None and change.version == version.version:
        data.update(
            split_before=traffic.as_json(change.before),
            split_after=traffic.as_json(change.after),
            actor=change.actor,
            reason=change.reason,
        )
    elif (
        version is not None
        and (audit := _latest_audit(session, deployment.tenant_id))
        and (audit.version == version.version)
    ):
        data.update(_audit_data(audit))
    else:
        split = traffic.as_json(_split(session, deployment.tenant_id))
        data.update(split_before=split, split_after=split, actor="worker")
    emit(
        session,
        deployment.tenant_id,
        kind,
        data,
        dedupe_key=f"deployment:{deployment.id}:{kind.value}",
    )


def canary_decided(session: Session, assessment: Assessment, change: Any) -> None:
    """The sweep applied a step, a promotion or a rollback (`change`: `versions.Change`)."""
    decision = assessment.decision
    if decision is None or decision.action not in _CANARY_TYPES:
        return
    canary = assessment.canary
    data = {
        "tenant": tenant_data(session, canary.tenant_id),
        "deployment": {"id": str(canary.deployment_id)},
        "version": canary.version,
        "split_before": traffic.as_json(change.before),
        "split_after": traffic.as_json(change.after),
        "actor": "auto",
        "reason": decision.reason,
        "decision": decision_data(assessment),
    }
    emit(session, canary.tenant_id, _CANARY_TYPES[decision.action], data)


def held_past_share(assessments: list[Assessment], now: datetime) -> list[Assessment]:
    """The canaries a sweep (as of `now`) held past FTDEPLOY_NOTIFY_HOLD_SHARE of their progress
    deadline: those `canaries_holding` tells of. Pure: a sweep whose canaries are all early needs
    no unit of work for them."""
    share = get_settings().notify_hold_share
    return [
        assessment
        for assessment in assessments
        if assessment.decision is not None
        and assessment.decision.action is Action.HOLD
        and assessment.canary.policy is not None
        and (now - assessment.canary.step_started_at).total_seconds()
        >= share * assessment.canary.policy.deadline_seconds
    ]


def canaries_holding(session: Session, assessments: list[Assessment], now: datetime) -> int:
    """Tell of each canary `held_past_share` returns, once per step (deduplicated by the
    deployment and its step start), in the caller's unit of work. Only flushes; raises what the
    database raises (a missed notice is the next sweep's). Returns how many were written."""
    return sum(
        _holding(session, assessment, now) for assessment in held_past_share(assessments, now)
    )


def _holding(session: Session, assessment: Assessment, now: datetime) -> bool:
    canary = assessment.canary
    assert assessment.decision is not None
    key = f"canary:{canary.deployment_id}:{canary.step_started_at.isoformat()}:holding"
    split = traffic.as_json(_split(session, canary.tenant_id))
    data = {
        "tenant": tenant_data(session, canary.tenant_id),
        "deployment": {"id": str(canary.deployment_id)},
        "version": canary.version,
        "split_before": split,
        "split_after": split,
        "actor": "auto",
        "reason": assessment.decision.reason,
        "decision": decision_data(assessment, now),
    }
    written = emit(session, canary.tenant_id, EventType.CANARY_HOLDING, data, dedupe_key=key)
    return written is not None


def decision_data(assessment: Assessment, now: datetime | None = None) -> dict[str, Any]:
    """The counts, bounds and policy behind a canary decision (taken as of `now`)."""
    canary, policy, decision = assessment.canary, assessment.canary.policy, assessment.decision
    in_step = max(0.0, ((now or clock.now()) - canary.step_started_at).total_seconds())
    out: dict[str, Any] = {
        "action": assessment.action,
        "next_percent": decision.next_percent if decision else None,
        "traffic_percent": canary.traffic_percent,
        "in_step_seconds": round(in_step, 1),
        "samples": samples(canary),
        "canary": _counts(canary.canary),
        "stable": _counts(canary.stable),
        "value": decision.metric_value if decision else None,
    }
    if policy is not None:
        lower, upper = _bounds(canary.canary, policy.metric)
        out.update(
            metric=policy.metric.value,
            threshold=policy.threshold,
            bounds_95={"lower": lower, "upper": upper},
            min_samples=policy.min_samples,
            bake_seconds=policy.bake_seconds,
            deadline_seconds=policy.deadline_seconds,
            steps=list(policy.steps),
        )
    return out


def _counts(counts: Counts) -> dict[str, Any]:
    return {
        "requests": counts.requests,
        "successes": counts.successes,
        "score_count": counts.score_count,
        "score_mean": round(counts.score_sum / counts.score_count, 6)
        if counts.score_count
        else None,
    }


def _bounds(counts: Counts, metric: Metric) -> tuple[float | None, float | None]:
    if metric is Metric.SUCCESS_RATE:
        if counts.requests == 0:
            return None, None
        lower, upper = wilson_bounds(counts.successes, counts.requests)
        return round(lower, 6), round(upper, 6)
    n = counts.score_count
    if n < 2:
        return None, None
    mean = counts.score_sum / n
    var = max(0.0, (counts.score_sq_sum - n * mean * mean) / (n - 1))
    half = Z_95 * math.sqrt(var / n)
    return round(max(0.0, mean - half), 6), round(min(1.0, mean + half), 6)


def operation_finished(session: Session, operation: Operation) -> None:
    """A queued operation ended: `operation.<status>`, once per operation and status."""
    try:
        kind = EventType(f"operation.{operation.status}")
    except ValueError:
        return  # not final (queued, running)
    result = operation.result or {}
    split = traffic.as_json(_split(session, operation.tenant_id))
    data = {
        "tenant": tenant_data(session, operation.tenant_id),
        "operation": {
            "id": str(operation.id),
            "kind": operation.kind,
            "status": operation.status,
            "version": operation.version,
            "traffic_percent": operation.traffic_percent,
            "error": operation.error,
        },
        "version": result.get("version", operation.version),
        "split_before": result.get("before", split),
        "split_after": result.get("after", split),
        # A cancelled operation is told as the act of whoever cancelled it.
        "actor": f"operator:{result.get('cancelled_by') or operation.actor}",
        "reason": result.get("reason") or operation.error,
    }
    emit(
        session,
        operation.tenant_id,
        kind,
        data,
        dedupe_key=f"operation:{operation.id}:{kind.value}",
    )


def job_failed(session: Session, job_id: str, reason: str) -> None:
    """A job-finished event is about to be ended as failed for good (call before recording it):
    told once, for the run's tenant or the one the event named (global when neither is known).
    Nothing when the event is done already (a late duplicate's failure does not count) or was
    already failed."""
    event = session.scalars(
        select(JobEvent)
        .where(JobEvent.openai_job_id == job_id)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if event is None or event.state != EventState.RECEIVED:
        return
    tenant_id = session.scalar(
        select(FinetuningRun.tenant_id).where(FinetuningRun.openai_job_id == job_id)
    )
    if tenant_id is None and event.tenant_hint:
        tenant_id = session.scalar(
            select(Tenant.id).where(
                (Tenant.slug == event.tenant_hint) | (Tenant.id == _uuid(event.tenant_hint))
            )
        )
    data = {
        "tenant": tenant_data(session, tenant_id),
        "job_id": job_id,
        "tenant_hint": event.tenant_hint,
        "attempts": event.attempts,
        "reason": reason,
    }
    emit(session, tenant_id, EventType.JOB_FAILED, data)


def tenant_paused(session: Session, tenant_id: uuid.UUID, actor: str, reason: str) -> None:
    emit(
        session,
        tenant_id,
        EventType.TENANT_PAUSED,
        _tenant_change(session, tenant_id, actor, reason),
    )


def tenant_resumed(session: Session, tenant_id: uuid.UUID, actor: str, reason: str) -> None:
    emit(
        session,
        tenant_id,
        EventType.TENANT_RESUMED,
        _tenant_change(session, tenant_id, actor, reason),
    )


def _tenant_change(
    session: Session, tenant_id: uuid.UUID, actor: str, reason: str
) -> dict[str, Any]:
    return {"tenant": tenant_data(session, tenant_id), "actor": actor, "reason": reason}


def _latest_audit(session: Session, tenant_id: uuid.UUID) -> TrafficEvent | None:
    return session.scalars(
        select(TrafficEvent)
        .where(TrafficEvent.tenant_id == tenant_id)
        .order_by(TrafficEvent.id.desc())
        .limit(1)
    ).one_or_none()


def _audit_data(audit: TrafficEvent) -> dict[str, Any]:
    return {
        "split_before": dict(audit.split_before),
        "split_after": dict(audit.split_after),
        "actor": audit.actor,
        "reason": audit.reason,
    }


def _split(session: Session, tenant_id: uuid.UUID) -> traffic.Split:
    return current_split(session, tenant_id)


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
