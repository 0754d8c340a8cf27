"""`ftdeploy job-finished`, `evaluation record` and `events`: what the training pipeline sends,
and what became of it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from registry import audit, records
from registry.db import unit_of_work
from registry.jobs import events, runs
from registry.models import EventState, Recommendation
from registry.tenants import find_tenant
from worker.cli import output

if TYPE_CHECKING:
    from worker.cli.main import Commands


def add_commands(commands: Commands) -> None:
    job = commands.command("job-finished", cmd_job_finished, "publish a job-finished event")
    job.add_argument("job_id")
    job.add_argument("--tenant")

    evaluation = commands.group("evaluation", "evaluations of runs")
    record = evaluation.command(
        "record", cmd_evaluation_record, "record an evaluation of a job's run"
    )
    record.add_argument("job_id")
    record.add_argument(
        "--recommendation", required=True, choices=[r.value for r in Recommendation]
    )
    record.add_argument("--metric", action="append", metavar="NAME=VALUE", default=[])
    record.add_argument(
        "--no-resume",
        action="store_true",
        help="do not ask the worker to resume a waiting deployment",
    )

    job_events = commands.command("events", cmd_events, "job-finished events of every tenant")
    job_events.add_argument("--state", choices=[s.value for s in EventState])
    job_events.add_argument("--limit", type=int, default=50)


def cmd_job_finished(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        if args.tenant:
            find_tenant(session, args.tenant)
        # Sent to the worker after the commit, then marked enqueued (else the reconciler sends it).
        events.publish_event(session, args.job_id, args.tenant, "cli")
    return output.emit(
        args, {"job_id": args.job_id, "queued": True}, lambda d: f"queued {args.job_id}"
    )


def cmd_evaluation_record(args: argparse.Namespace) -> int:
    metrics = runs.parse_metrics(args.metric)
    with unit_of_work() as session:
        evaluation = runs.record_evaluation(
            session, args.job_id, args.recommendation, metrics, resume=not args.no_resume
        )
        data = {
            "evaluation_id": str(evaluation.id),
            "job_id": args.job_id,
            "recommendation": evaluation.recommendation,
            "metrics": evaluation.metrics,
        }
    return output.emit(args, data, lambda d: f"recorded {d['recommendation']} for {d['job_id']}")


def cmd_events(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = [records.job_event(e) for e in audit.job_events(session, args.state, args.limit)]
    return output.emit(args, data, events_text)


def events_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no events yet"
    return output.table(
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
