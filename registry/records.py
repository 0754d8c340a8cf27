"""Registry records as plain data: the shapes `--json` prints and the HTTP API answers with, one
function per record, so every door shows a record the same way."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from registry.audit import Activity
from registry.canary.canaries import Assessment, samples
from registry.models import (
    AuditEvent,
    DeploymentPolicy,
    JobEvent,
    ModelVersion,
    Operation,
    Tenant,
    TrafficEvent,
)
from registry.notify.models import (
    DeliveryAttempt,
    NotificationDelivery,
    NotificationEndpoint,
    OutboxEvent,
)
from registry.notify.types import DeliveryStatus


def when(value: datetime | None) -> str | None:
    """A timestamp as JSON shows it (ISO 8601), None kept."""
    return value.isoformat() if value is not None else None


def version(v: ModelVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "name": v.name,
        "model_id": v.model_id,
        "status": v.status,
        "traffic_percent": v.traffic_percent,
        "run_id": str(v.run_id),
        "metrics": v.metrics,
        "created_at": when(v.created_at),
        "deployed_at": when(v.deployed_at),
        # A rolled-back version is never restored by a later rollback (registry.versions).
        "rolled_back": v.rolled_back_at is not None,
        "rolled_back_at": when(v.rolled_back_at),
    }


def traffic_event(e: TrafficEvent) -> dict[str, Any]:
    return {
        "kind": "traffic",
        "at": when(e.created_at),
        "action": e.action,
        "version": e.version,
        "actor": e.actor,
        "reason": e.reason,
        "before": e.split_before,
        "after": e.split_after,
    }


def audit_event(e: AuditEvent) -> dict[str, Any]:
    """A policy change, pause, resume or refused claim, in the shape of a traffic change (with
    `kind`): `before`/`after` hold the fields that changed (a policy's) instead of a split."""
    changes = e.changes or {}
    if e.action == "policy":
        before = {name: change["before"] for name, change in changes.items()}
        after = {name: change["after"] for name, change in changes.items()}
    else:
        before, after = changes.get("before", {}), changes.get("after", {})
    return {
        "kind": "audit",
        "at": when(e.created_at),
        "action": e.action,
        "version": None,
        "actor": e.actor,
        "reason": e.reason,
        "before": before,
        "after": after,
    }


def activity(a: Activity) -> dict[str, Any]:
    return {
        "at": when(a.at),
        "kind": a.kind,
        "subject": a.subject,
        "status": a.status,
        "detail": a.detail,
    }


def job_event(e: JobEvent, refusals: Sequence[AuditEvent] = ()) -> dict[str, Any]:
    """A job event; `refusals` are the refused claims of another tenant on it (the event kept
    its own), from `registry.audit_events.refusals_of`."""
    return {
        "job_id": e.openai_job_id,
        "tenant": e.tenant_hint,
        "source": e.source,
        "state": e.state,
        "outcome": e.outcome,
        "attempts": e.attempts,
        "received_at": when(e.received_at),
        "updated_at": when(e.updated_at),
        "refused_claims": [
            {"at": when(r.created_at), **(r.changes or {}).get("refused", {})} for r in refusals
        ],
    }


def operation(o: Operation) -> dict[str, Any]:
    return {
        "operation_id": str(o.id),
        "kind": o.kind,
        "version": o.version,
        "traffic_percent": o.traffic_percent,
        "actor": o.actor,
        "reason": o.reason,
        "status": o.status,
        "result": o.result,
        "error": o.error,
        "created_at": when(o.created_at),
        "finished_at": when(o.finished_at),
        # Its message reached the broker; false while the reconciler still has to send it.
        "enqueued": o.enqueued_at is not None,
    }


def policy(tenant: Tenant, p: DeploymentPolicy) -> dict[str, Any]:
    return {
        "tenant": tenant.slug,
        "tenant_id": str(tenant.id),
        "strategy": p.strategy,
        "canary_percent": p.canary_percent,
        "canary_steps": p.canary_steps,
        "auto_promote": p.auto_promote,
        "threshold": p.auto_promote_threshold,
        "metric": p.metric,
        "min_samples": p.min_samples,
        "bake_seconds": p.bake_seconds,
        "deadline_seconds": p.progress_deadline_seconds,
        "auto_rollback": p.auto_rollback,
        "require_evaluation": p.require_evaluation,
        "keep_deprecated": p.keep_deprecated,
        "paused": p.paused,
        "paused_reason": p.paused_reason,
    }


def notification_endpoint(
    endpoint: NotificationEndpoint,
    tenant_slug: str | None,
    *,
    pending: int,
    oldest_pending_seconds: float | None,
    last_delivered_at: datetime | None,
) -> dict[str, Any]:
    """A notification endpoint as `notify list` and the API show it: never the URL (only its
    scheme and host) nor the secret."""
    return {
        "name": endpoint.name,
        "tenant": tenant_slug,
        "format": endpoint.format,
        "url": endpoint.url_hint,
        "events": list(endpoint.event_types) or ["*"],
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": when(endpoint.disabled_at),
        "failing_since": when(endpoint.failing_since),
        "pending": pending,
        "oldest_pending_seconds": oldest_pending_seconds,
        "last_delivered_at": when(last_delivered_at),
        "created_at": when(endpoint.created_at),
    }


def notification_delivery(
    delivery: NotificationDelivery, event: OutboxEvent, attempts: Sequence[DeliveryAttempt]
) -> dict[str, Any]:
    """One event's delivery to one endpoint, with every attempt (status code or error)."""
    return {
        "webhook_id": str(event.id),
        "type": event.type,
        "stream": delivery.stream,
        "seq": delivery.seq,
        "status": delivery.status,
        # Since it was last queued (a replay starts the retry schedule again; `history` keeps all).
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "next_attempt_at": when(delivery.next_attempt_at)
        if delivery.status == DeliveryStatus.PENDING
        else None,
        "created_at": when(delivery.created_at),
        "finished_at": when(delivery.finished_at),
        "history": [
            {
                "at": when(a.at),
                "status_code": a.status_code,
                "error": a.error,
                "duration_ms": round(a.duration_ms, 1),
            }
            for a in attempts
        ],
    }


def canary_status(assessment: Assessment, now: datetime) -> dict[str, Any]:
    """One live canary as `ftdeploy status` and `GET /v1/status` show it: where it is, what it
    has seen, what the next sweep would do and why (the same read and decision as the sweep)."""
    canary, policy, decision = assessment.canary, assessment.canary.policy, assessment.decision
    return {
        "tenant": canary.tenant,
        "version": canary.version,
        "traffic_percent": canary.traffic_percent,
        "steps": list(policy.steps) if policy else None,
        "step_started_at": when(canary.step_started_at),
        "in_step_seconds": round(max(0.0, (now - canary.step_started_at).total_seconds()), 1),
        "bake_seconds": policy.bake_seconds if policy else None,
        "deadline_seconds": policy.deadline_seconds if policy else None,
        "metric": policy.metric.value if policy else None,
        "samples": samples(canary),
        "min_samples": policy.min_samples if policy else None,
        "value": decision.metric_value if decision else None,
        "threshold": policy.threshold if policy else None,
        "stable_requests": canary.stable.requests,
        "next": "paused" if canary.paused else assessment.action,
        "next_percent": None if canary.paused or not decision else decision.next_percent,
        "reason": (
            f"the tenant is paused (`ftdeploy tenant resume {canary.tenant}`); "
            f"unpaused it would {assessment.action}: {assessment.reason}"
            if canary.paused
            else assessment.reason
        ),
        "paused": canary.paused,
    }
