"""The `ftdeploy` command: operators' and scripts' door to the registry and the queue.

Every command that prints data takes --json. Errors print one line on stderr and exit non-zero
(the error's own exit code); no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from registry import audit, operations, versions
from registry.db import session_factory, unit_of_work
from registry.errors import FtdeployError
from registry.jobs import events, runs
from registry.models import OperationStatus
from registry.routing import Router
from registry.settings import get_settings
from registry.tenants import PolicyChanges, create_tenant, find_tenant, get_policy, set_policy
from worker.cli import views

Handler = Callable[[argparse.Namespace], int]


def _policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", choices=["immediate", "canary", "blue_green"])
    parser.add_argument("--canary-percent", type=int, metavar="N")
    parser.add_argument("--steps", metavar="10,25,50,100", help="progressive canary steps")
    parser.add_argument("--auto-promote", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--threshold", type=float, metavar="X", help="0..1, default 0.95")
    parser.add_argument("--metric", choices=["success_rate", "score"])
    parser.add_argument("--min-samples", type=int, metavar="N")
    parser.add_argument("--bake-seconds", type=int, metavar="N")
    parser.add_argument("--deadline-seconds", type=int, metavar="N")
    parser.add_argument("--auto-rollback", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--require-evaluation", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--keep-deprecated", type=int, metavar="N")


def _policy_changes(args: argparse.Namespace) -> PolicyChanges:
    steps = None
    if args.steps is not None:
        from registry.canary.analysis import parse_steps

        steps = parse_steps(args.steps)
    return PolicyChanges(
        strategy=args.strategy,
        canary_percent=args.canary_percent,
        canary_steps=steps,
        auto_promote=args.auto_promote,
        auto_promote_threshold=args.threshold,
        metric=args.metric,
        min_samples=args.min_samples,
        bake_seconds=args.bake_seconds,
        progress_deadline_seconds=args.deadline_seconds,
        auto_rollback=args.auto_rollback,
        require_evaluation=args.require_evaluation,
        keep_deprecated=args.keep_deprecated,
    )


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from migrations import upgrade

    upgrade(get_settings().database_url_value)
    print("database schema is up to date")
    return 0


def cmd_tenant_add(args: argparse.Namespace) -> int:
    changes = _policy_changes(args)
    with unit_of_work() as session:
        tenant = create_tenant(session, args.slug)
        policy = set_policy(session, tenant.id, changes)
        data = views.policy(tenant, policy)
    return views.emit(args, data, views.policy_text)


def cmd_tenant_policy(args: argparse.Namespace) -> int:
    changes = _policy_changes(args)
    with unit_of_work() as session:
        tenant = find_tenant(session, args.slug)
        policy = (
            set_policy(session, tenant.id, changes)
            if changes.given()
            else get_policy(session, tenant.id)
        )
        data = views.policy(tenant, policy)
    return views.emit(args, data, views.policy_text)


def cmd_job_finished(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        if args.tenant:
            find_tenant(session, args.tenant)
        # Sent to the worker after the commit, then marked enqueued (else the reconciler sends it).
        events.publish_event(session, args.job_id, args.tenant, "cli")
    return views.emit(
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
    return views.emit(args, data, lambda d: f"recorded {d['recommendation']} for {d['job_id']}")


def cmd_versions(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = [views.version(v) for v in versions.list_versions(session, args.slug)]
    return views.emit(args, data, views.versions_text)


def cmd_history(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = [views.traffic_event(e) for e in audit.history(session, args.slug, args.limit)]
        other = [views.activity(a) for a in audit.activity(session, args.slug, args.limit)]
    # --json keeps to the traffic trail (a list of changes); `activity` has the rest as JSON.
    return views.emit(args, data, lambda rows: views.history_text(rows, other))


def cmd_activity(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = [views.activity(a) for a in audit.activity(session, args.slug, args.limit)]
    return views.emit(args, data, views.activity_text)


def cmd_events(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = [views.job_event(e) for e in audit.job_events(session, args.state, args.limit)]
    return views.emit(args, data, views.events_text)


def cmd_resolve(args: argparse.Namespace) -> int:
    router = Router(session_factory(), staleness=0)
    model = router.resolve(args.slug, args.subject)
    if model is None:
        print(f"no model: tenant {args.slug!r} has no version in production", file=sys.stderr)
        return 4
    return views.emit(
        args,
        {"tenant": args.slug, "subject": args.subject, "model_id": model},
        lambda d: d["model_id"],
    )


def cmd_promote(args: argparse.Namespace) -> int:
    return _queue(args, "promote", version=args.version, traffic_percent=args.traffic)


def cmd_rollback(args: argparse.Namespace) -> int:
    return _queue(args, "rollback")


def _queue(args: argparse.Namespace, kind: str, **arguments: Any) -> int:
    if "version" in arguments:
        arguments["version"] = versions.check_version_number(arguments["version"])
    with unit_of_work() as session:
        # The worker is asked to run it after the commit.
        operation = operations.submit_operation(
            session, args.slug, kind, actor=args.actor, **arguments
        )
        operation_id = str(operation.id)
    if not args.wait:
        return views.emit(
            args, {"operation_id": operation_id, "status": "queued"}, lambda d: d["operation_id"]
        )
    return _wait_for(args, operation_id)


def _wait_for(args: argparse.Namespace, operation_id: str) -> int:
    deadline = time.monotonic() + args.timeout
    while True:
        with unit_of_work() as session:
            operation = operations.get_operation(session, operation_id)
            data = views.operation(operation)
        if operation.status in (OperationStatus.SUCCEEDED, OperationStatus.FAILED):
            views.emit(args, data, views.operation_text)
            return 0 if operation.status == OperationStatus.SUCCEEDED else 1
        if time.monotonic() > deadline:
            print(
                f"operation {operation_id} still {data['status']} after {args.timeout:g} s "
                "(is a worker running?)",
                file=sys.stderr,
            )
            return 5
        time.sleep(0.1)


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.run import run_worker

    return run_worker(concurrency=args.concurrency, beat=not args.no_beat)


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo.flow import run_demo

    return run_demo(keep=args.keep)


def cmd_webhooks_serve(args: argparse.Namespace) -> int:
    from worker.web import serve

    return serve(host=args.host, port=args.port, workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftdeploy",
        description="Take finished OpenAI fine-tuning jobs to live traffic, safely, per tenant.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        handler: Handler,
        help_text: str,
        *,
        json_out: bool = True,
        parent: Any = commands,
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(
            name, help=help_text, description=help_text
        )
        sub.set_defaults(handler=handler)
        if json_out:
            sub.add_argument("--json", action="store_true", help="print JSON for scripts")
        return sub

    db = commands.add_parser("db", help="database schema").add_subparsers(dest="db", required=True)
    command("upgrade", cmd_db_upgrade, "apply migrations", json_out=False, parent=db)

    tenant = commands.add_parser("tenant", help="tenants and their policy")
    tenant_commands = tenant.add_subparsers(dest="tenant", required=True)
    add = command("add", cmd_tenant_add, "create a tenant", parent=tenant_commands)
    add.add_argument("slug")
    _policy_options(add)
    policy = command(
        "policy", cmd_tenant_policy, "show or change a tenant's policy", parent=tenant_commands
    )
    policy.add_argument("slug")
    _policy_options(policy)

    job = command("job-finished", cmd_job_finished, "publish a job-finished event")
    job.add_argument("job_id")
    job.add_argument("--tenant")

    evaluation = commands.add_parser("evaluation", help="evaluations of runs")
    evaluation_commands = evaluation.add_subparsers(dest="evaluation", required=True)
    record = command(
        "record",
        cmd_evaluation_record,
        "record an evaluation of a job's run",
        parent=evaluation_commands,
    )
    record.add_argument("job_id")
    record.add_argument("--recommendation", required=True, choices=["approve", "review", "reject"])
    record.add_argument("--metric", action="append", metavar="NAME=VALUE", default=[])
    record.add_argument(
        "--no-resume",
        action="store_true",
        help="do not ask the worker to resume a waiting deployment",
    )

    listing = command("versions", cmd_versions, "list a tenant's versions")
    listing.add_argument("slug")

    trail = command("history", cmd_history, "a tenant's audit trail of traffic changes")
    trail.add_argument("slug")
    trail.add_argument("--limit", type=int, default=50)

    other = command(
        "activity", cmd_activity, "a tenant's deployments, operations and job events, with reasons"
    )
    other.add_argument("slug")
    other.add_argument("--limit", type=int, default=50)

    job_events = command("events", cmd_events, "job-finished events of every tenant")
    job_events.add_argument("--state", choices=["received", "done", "failed"])
    job_events.add_argument("--limit", type=int, default=50)

    resolve = command("resolve", cmd_resolve, "print the model a request would use")
    resolve.add_argument("slug")
    resolve.add_argument("--subject", help="user or session key: the choice is sticky per key")

    for name, handler, text in (
        ("promote", cmd_promote, "queue a promotion"),
        ("rollback", cmd_rollback, "queue a rollback"),
    ):
        sub = command(name, handler, text)
        sub.add_argument("slug")
        if name == "promote":
            sub.add_argument("version", help="version number (3 or v3)")
            sub.add_argument("--traffic", type=int, default=100, metavar="N", help="1..100")
        sub.add_argument("--wait", action="store_true", help="wait for the result")
        sub.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
        sub.add_argument("--actor", default="cli", help="who asks (kept in the audit trail)")

    run = command("worker", cmd_worker, "run the worker and beat on this machine", json_out=False)
    run.add_argument("--concurrency", type=int, default=2)
    run.add_argument("--no-beat", action="store_true")

    demo = command("demo", cmd_demo, "the whole flow on embedded defaults", json_out=False)
    demo.add_argument("--keep", action="store_true", help="keep the demo's data directory")

    hooks = commands.add_parser("webhooks", help="the OpenAI webhook receiver")
    hooks_commands = hooks.add_subparsers(dest="webhooks", required=True)
    serve = command(
        "serve",
        cmd_webhooks_serve,
        "serve POST /webhooks/openai and GET /healthz (needs FTDEPLOY_WEBHOOK_SECRET)",
        json_out=False,
        parent=hooks_commands,
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes")

    from worker.cli import canary as canary_cli

    canary_cli.add_commands(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _prepare_embedded_database(args)
        code: int = args.handler(args)
        return code
    except FtdeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except SQLAlchemyError as error:
        # The driver's message names the host, never the password; keep just its first line.
        first_line = " ".join(str(getattr(error, "orig", error)).strip().splitlines()[0:1])
        what = (
            "database unavailable"
            if isinstance(error, OperationalError | InterfaceError)
            else "database refused the change"
        )
        print(f"error: {what}: {first_line}", file=sys.stderr)
        return 1
    except ValueError as error:  # settings out of range, say
        print(f"error: {error}", file=sys.stderr)
        return 2


def _prepare_embedded_database(args: argparse.Namespace) -> None:
    """On the embedded default the schema is created or upgraded as needed: no extra step."""
    settings = get_settings()
    if settings.is_embedded_database and args.handler not in (cmd_db_upgrade, cmd_demo):
        from migrations import upgrade

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.database_url_value)


def run() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `ftdeploy versions acme | head`: the reader left, not an error
        sys.stderr.close()
        code = 0
    sys.exit(code)
