"""How registry objects look to people (tables) and to scripts (JSON)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from registry.audit import Activity
from registry.models import (
    DeploymentPolicy,
    JobEvent,
    ModelVersion,
    Operation,
    Tenant,
    TrafficEvent,
)


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def emit(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> int:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text(data))
    return 0


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def version(v: ModelVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "name": v.name,
        "model_id": v.model_id,
        "status": v.status,
        "traffic_percent": v.traffic_percent,
        "run_id": str(v.run_id),
        "metrics": v.metrics,
        "created_at": _time(v.created_at),
        "deployed_at": _time(v.deployed_at),
    }


def versions_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no versions yet"
    return table(
        ["VERSION", "STATUS", "TRAFFIC", "MODEL", "DEPLOYED"],
        [
            [
                r["name"],
                r["status"],
                f"{r['traffic_percent']}%",
                r["model_id"],
                (r["deployed_at"] or "-")[:19],
            ]
            for r in rows
        ],
    )


def traffic_event(e: TrafficEvent) -> dict[str, Any]:
    return {
        "at": _time(e.created_at),
        "action": e.action,
        "version": e.version,
        "actor": e.actor,
        "reason": e.reason,
        "before": e.split_before,
        "after": e.split_after,
    }


def _split_text(split: dict[str, int]) -> str:
    return " ".join(f"v{k}:{v}%" for k, v in split.items()) or "-"


def history_text(rows: list[dict[str, Any]], other: list[dict[str, Any]] | None = None) -> str:
    text = _traffic_text(rows)
    if other:
        text += "\n\nDeployments, operations and events:\n" + activity_text(other)
    return text


def _traffic_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no traffic changes yet"
    return table(
        ["AT", "ACTION", "ACTOR", "BEFORE", "AFTER", "REASON"],
        [
            [
                r["at"][:19],
                r["action"],
                r["actor"],
                _split_text(r["before"]),
                _split_text(r["after"]),
                r["reason"],
            ]
            for r in rows
        ],
    )


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
    }


def policy_text(data: dict[str, Any]) -> str:
    return "\n".join(f"{key:<20} {value}" for key, value in data.items())


def operation(o: Operation) -> dict[str, Any]:
    return {
        "operation_id": str(o.id),
        "kind": o.kind,
        "version": o.version,
        "traffic_percent": o.traffic_percent,
        "status": o.status,
        "result": o.result,
        "error": o.error,
        "created_at": _time(o.created_at),
        "finished_at": _time(o.finished_at),
    }


def operation_text(data: dict[str, Any]) -> str:
    if data["status"] == "failed":
        return f"{data['kind']} failed: {data['error']}"
    result = data["result"] or {}
    return (
        f"{data['kind']} {data['status']}: {_split_text(result.get('before', {}))} -> "
        f"{_split_text(result.get('after', {}))} ({result.get('reason', '')})"
    )


def activity(a: Activity) -> dict[str, Any]:
    return {
        "at": _time(a.at),
        "kind": a.kind,
        "subject": a.subject,
        "status": a.status,
        "detail": a.detail,
    }


def activity_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "nothing yet"
    return table(
        ["AT", "KIND", "SUBJECT", "STATUS", "DETAIL"],
        [[r["at"][:19], r["kind"], r["subject"], r["status"], r["detail"] or ""] for r in rows],
    )


def job_event(e: JobEvent) -> dict[str, Any]:
    return {
        "job_id": e.openai_job_id,
        "tenant": e.tenant_hint,
        "source": e.source,
        "state": e.state,
        "outcome": e.outcome,
        "attempts": e.attempts,
        "received_at": _time(e.received_at),
        "updated_at": _time(e.updated_at),
    }


def events_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no events yet"
    return table(
        ["JOB", "TENANT", "STATE", "ATTEMPTS", "UPDATED", "OUTCOME"],
        [
            [
                r["job_id"],
                r["tenant"] or "-",
                r["state"],
                r["attempts"],
                r["updated_at"][:19],
                r["outcome"] or "",
            ]
            for r in rows
        ],
    )
