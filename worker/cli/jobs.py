"""`ftdeploy job-finished`, `evaluation record` and `events`: what the training pipeline sends,
and what became of it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from registry import audit, audit_events, clock, messages, records, validation
from registry.db import unit_of_work
from registry.errors import InvalidInput
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

    job_events = commands.command(
        "events",
        cmd_events,
        "job-finished events of every tenant; `events retry` re-sends failed ones",
    )
    job_events.add_argument(
        "action",
        nargs="?",
        choices=["list", "retry"],
        default="list",
        help="list (default), or retry: re-open failed events and send them again",
    )
    job_events.add_argument(
        "--state",
        choices=[s.value for s in EventState],
        help="only events in this state (retry: failed, the default and the only choice)",
    )
    job_events.add_argument("--since", metavar="2h|ISO-TIME", help="only events updated since")
    job_events.add_argument("--tenant", metavar="SLUG", help="only this tenant's events")
    job_events.add_argument("--limit", type=int, default=50)


def cmd_job_finished(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        if args.tenant:
            find_tenant(session, args.tenant)
        # Sent to the worker after the commit, then marked enqueued (else the reconciler sends it).
        refusal = events.publish_event(session, args.job_id, args.tenant, "cli")
    if refusal is not None:
        raise refusal  # committed first: the refusal stays in the audit trail
    return output.emit(
        args, {"job_id": args.job_id, "queued": True}, lambda d: f"queued {args.job_id}"
    )


def cmd_evaluation_record(args: argparse.Namespace) -> int:
    metrics = runs.parse_metrics(args.metric)
    with unit_of_work() as session:
        # Sent by this door after the commit, so that it can tell when the broker is away.
        held = messages.hold_messages(session)
        evaluation = runs.record_evaluation(
            session, args.job_id, args.recommendation, metrics, resume=not args.no_resume
        )
        data = {
            "evaluation_id": str(evaluation.id),
            "job_id": args.job_id,
            "recommendation": evaluation.recommendation,
            "metrics": evaluation.metrics,
        }
    unsent = messages.deliver_held(held)
    if unsent is not None:
        return output.error(
            args,
            "BrokerUnavailable",
            f"evaluation {data['evaluation_id']} of {args.job_id} is recorded but the broker is "
            f"unavailable ({unsent}); beat's reconciler sends its resume when the broker is back",
            output.NOT_SENT,
        )
    return output.emit(args, data, lambda d: f"recorded {d['recommendation']} for {d['job_id']}")


def cmd_events(args: argparse.Namespace) -> int:
    if args.action == "retry":
        return cmd_events_retry(args)
    with unit_of_work() as session:
        rows = _select_events(session, args, args.state)
        refused = audit_events.refusals_of(session, [f"job {e.openai_job_id}" for e in rows])
        data = [records.job_event(e, refused.get(f"job {e.openai_job_id}", ())) for e in rows]
    return output.emit(args, data, events_text)


def _select_events(session: Session, args: argparse.Namespace, state: str | None) -> list[Any]:
    since = validation.since(args.since, clock.now()) if args.since else None
    tenants = [find_tenant(session, args.tenant)] if args.tenant else None
    limit = validation.whole_number("limit", args.limit, 1)
    return audit.job_events(session, state, limit, tenants=tenants, since=since)


def cmd_events_retry(args: argparse.Namespace) -> int:
    """After an outage (say, of OpenAI credentials): re-open each failed event in the registry
    and send it again, exactly as `job-finished` does (committed first, then sent)."""
    if args.state not in (None, EventState.FAILED):
        raise InvalidInput("state", "only failed events are retried")
    with unit_of_work() as session:
        failed = _select_events(session, args, EventState.FAILED)
        # Each is sent after the commit, then marked enqueued (else the reconciler sends it).
        resent = [events.republish_event(session, e.openai_job_id) for e in failed]
        listed = [{"job_id": e.openai_job_id, "tenant": e.tenant_hint} for e in resent]
    data = {"resent": len(listed), "events": listed}
    return output.emit(args, data, _retry_text)


def _retry_text(data: dict[str, Any]) -> str:
    if not data["resent"]:
        return "no failed events to retry"
    lines = [f"re-sent {data['resent']} failed event(s):"]
    lines += [f"  {e['job_id']} ({e['tenant'] or 'tenant from the job'})" for e in data["events"]]
    return "\n".join(lines)


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
                (r["outcome"] or "") + _refused_text(r["refused_claims"]),
            ]
            for r in rows
        ],
    )


def _refused_text(claims: list[dict[str, Any]]) -> str:
    if not claims:
        return ""
    last = claims[-1]
    return f" [refused {len(claims)}x: {last.get('tenant')} via {last.get('source')}]"
