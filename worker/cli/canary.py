"""`ftdeploy outcome` and `ftdeploy status`: outcomes from people and scripts, and what the
auto-promote sweep sees and would do next."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from registry import clock, records
from registry.canary.canaries import assess, read_live_canaries
from registry.canary.outcome_input import validate_outcome
from registry.canary.outcomes import store_outcomes
from registry.canary.resolver import VersionResolver
from registry.db import unit_of_work
from registry.models import ModelVersion
from registry.settings import get_settings
from registry.tenants import find_tenant
from worker import metrics
from worker.cli import output

if TYPE_CHECKING:
    from worker.cli.main import Commands


def add_commands(commands: Commands) -> None:
    outcome = commands.command(
        "outcome", cmd_outcome, "record the outcome of requests a model served"
    )
    outcome.add_argument("slug", help="tenant slug or id")
    outcome.add_argument("model_id", help="the model id that served, or a version (3 or v3)")
    verdict = outcome.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--success", action="store_true", help="the requests succeeded")
    verdict.add_argument("--failure", action="store_true", help="the requests failed")
    outcome.add_argument("--count", type=int, default=1, metavar="N", help="alike requests")
    outcome.add_argument("--score", type=float, metavar="X", help="quality score in 0..1")
    outcome.add_argument("--latency-ms", type=float, metavar="N", help="latency, ms")

    status = commands.command(
        "status", cmd_status, "live canaries and what the next sweep would do"
    )
    status.add_argument("slug", nargs="?", help="only this tenant")


def cmd_outcome(args: argparse.Namespace) -> int:
    outcome = validate_outcome(
        args.slug,
        args.model_id,
        bool(args.success),
        score=args.score,
        latency_ms=args.latency_ms,
        count=args.count,
    )
    resolver = VersionResolver()
    with unit_of_work() as session:
        # Resolved first so an unknown tenant or model exits with its own error and code.
        _, version_id = resolver.resolve(session, outcome.tenant, outcome.model)
        result = store_outcomes(
            session,
            [outcome],
            bucket_seconds=get_settings().outcome_bucket_seconds,
            resolver=resolver,
        )
        version = session.get_one(ModelVersion, version_id)
        data = {
            "tenant": args.slug,
            "version": version.version,
            "model_id": version.model_id,
            "status": version.status,
            "success": outcome.success,
            "recorded": result.recorded,
        }
    metrics.outcomes_stored(result)
    return output.emit(args, data, _outcome_text)


def _outcome_text(data: dict[str, Any]) -> str:
    one = data["recorded"] == 1
    kind = (
        ("success" if one else "successes")
        if data["success"]
        else ("failure" if one else "failures")
    )
    text = f"recorded {data['recorded']} {kind} for {data['tenant']} v{data['version']}"
    if data["status"] != "production":
        text += f" (v{data['version']} is {data['status']}: kept, not counted toward a canary)"
    return text


def cmd_status(args: argparse.Namespace) -> int:
    now = clock.now()
    with unit_of_work() as session:  # read only: a short transaction, no lock
        tenant_id = find_tenant(session, args.slug).id if args.slug else None
        canaries = read_live_canaries(session, tenant_id)
    rows = [records.canary_status(assessment, now) for assessment in assess(canaries, now)]
    return output.emit(args, rows, status_text)


def _or_dash(value: object, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def status_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no live canaries"
    table = output.table(
        ["TENANT", "VERSION", "TRAFFIC", "SAMPLES", "METRIC", "IN STEP", "NEXT"],
        [
            [
                r["tenant"],
                f"v{r['version']}",
                f"{r['traffic_percent']}%",
                f"{r['samples']}/{_or_dash(r['min_samples'])}",
                f"{_or_dash(r['metric'])} {_or_dash(r['value'], '{:.3f}')} "
                f"(>= {_or_dash(r['threshold'], '{:g}')})",
                f"{r['in_step_seconds']:.0f}s (bake {_or_dash(r['bake_seconds'], '{:g}')}s)",
                r["next"] + (f" -> {r['next_percent']}%" if r["next_percent"] else ""),
            ]
            for r in rows
        ],
    )
    reasons = [f"{r['tenant']} v{r['version']}: {r['reason']}" for r in rows]
    return table + "\n\n" + "\n".join(reasons)
