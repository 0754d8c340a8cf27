"""`ftdeploy promote` and `rollback`: operators' queued operations, optionally waited for; and
`ftdeploy operations [SLUG]`, which lists them, and `operations cancel ID`."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from registry import messages, operations, records, validation
from registry.db import unit_of_work
from registry.errors import InvalidInput
from registry.models import FINAL_OPERATION_STATUSES, OperationKind, OperationStatus
from worker.cli import output

if TYPE_CHECKING:
    from worker.cli.main import Commands

CANCEL = "cancel"


def add_commands(commands: Commands) -> None:
    for name, handler, text in (
        ("promote", cmd_promote, "queue a promotion"),
        ("rollback", cmd_rollback, "queue a rollback"),
    ):
        sub = commands.command(name, handler, text)
        sub.add_argument("slug")
        if name == "promote":
            sub.add_argument("version", help="version number (3 or v3)")
            sub.add_argument("--traffic", type=int, default=100, metavar="N", help="1..100")
        sub.add_argument("--wait", action="store_true", help="wait for the result")
        sub.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
        sub.add_argument("--reason", help="why (kept on the operation and in the audit trail)")
        sub.add_argument(
            "--force",
            action="store_true",
            help="apply it even if the tenant's split changed after it was queued "
            "(otherwise it ends stale)",
        )
        output.add_actor(sub)

    listing = commands.command(
        "operations",
        cmd_operations,
        "queued operations and how they ended; `operations cancel ID` cancels a queued one",
    )
    listing.add_argument(
        "target",
        nargs="?",
        metavar="SLUG | cancel",
        help="only this tenant's operations (default: every tenant's); or `cancel ID`",
    )
    listing.add_argument("operation_id", nargs="?", metavar="ID", help="with cancel: its id")
    listing.add_argument(
        "--status", choices=[s.value for s in OperationStatus], help="only in this status"
    )
    listing.add_argument("--limit", type=int, default=50, help="at most this many (1..1000)")
    listing.add_argument("--reason", help="with cancel: why (kept on the operation)")
    output.add_actor(listing)


def cmd_promote(args: argparse.Namespace) -> int:
    return _queue(args, OperationKind.PROMOTE, version=args.version, traffic_percent=args.traffic)


def cmd_rollback(args: argparse.Namespace) -> int:
    return _queue(args, OperationKind.ROLLBACK)


def _queue(args: argparse.Namespace, kind: OperationKind, **arguments: Any) -> int:
    if "version" in arguments:
        arguments["version"] = validation.version_number(arguments["version"])
    with unit_of_work() as session:
        # Sent by this door after the commit, so that it can tell when the broker is away.
        held = messages.hold_messages(session)
        operation = operations.queue_operation(
            session,
            args.slug,
            kind,
            actor=output.actor(args),
            reason=args.reason,
            force=args.force,
            **arguments,
        )
        operations.send(session, operation, args.slug)
        operation_id = str(operation.id)
    unsent = messages.deliver_held(held)
    if unsent is not None:
        return output.error(
            args,
            "BrokerUnavailable",
            f"operation {operation_id} is recorded (queued) but the broker is unavailable "
            f"({unsent}); beat's reconciler sends it when the broker is back",
            output.NOT_SENT,
        )
    if not args.wait:
        return output.emit(
            args, {"operation_id": operation_id, "status": "queued"}, lambda d: d["operation_id"]
        )
    return _wait_for(args, operation_id)


def _wait_for(args: argparse.Namespace, operation_id: str) -> int:
    deadline = time.monotonic() + args.timeout
    status = OperationStatus.QUEUED.value
    try:
        while True:
            with unit_of_work() as session:
                operation = operations.get_operation(session, operation_id)
                data = records.operation(operation)
            status = operation.status
            if status in FINAL_OPERATION_STATUSES:
                output.emit(args, data, operation_text)
                return output.OK if status == OperationStatus.SUCCEEDED else output.FAILED
            if time.monotonic() > deadline:
                return _still_open(args, operation_id, status, f"after {args.timeout:g} s")
            time.sleep(0.1)
    except KeyboardInterrupt:
        return _still_open(args, operation_id, status, "(stopped waiting)")


def _still_open(args: argparse.Namespace, operation_id: str, status: str, when: str) -> int:
    """The one line `--wait` leaves when it gives up: the operation goes on without us."""
    return output.error(
        args,
        "OperationStillQueued",
        f"operation {operation_id} is still {status} {when} (is a worker running?); "
        f"cancel it with: ftdeploy operations cancel {operation_id}",
        output.STILL_RUNNING,
    )


def operation_text(data: dict[str, Any]) -> str:
    if data["status"] != OperationStatus.SUCCEEDED:
        return f"{data['kind']} {data['status']}: {data['error']}"
    result = data["result"] or {}
    return (
        f"{data['kind']} {data['status']}: {output.split_text(result.get('before', {}))} -> "
        f"{output.split_text(result.get('after', {}))} ({result.get('reason', '')})"
    )


def cmd_operations(args: argparse.Namespace) -> int:
    if args.target == CANCEL:
        return cmd_cancel(args)
    if args.operation_id is not None:
        raise InvalidInput(
            "arguments", f"unexpected {args.operation_id!r} (only cancel takes an ID)"
        )
    with unit_of_work() as session:
        rows = operations.list_operations(
            session, args.target, status=args.status, limit=args.limit
        )
        data = [{**records.operation(o), "tenant": slug} for o, slug in rows]
    return output.emit(args, data, operations_text)


def cmd_cancel(args: argparse.Namespace) -> int:
    if args.operation_id is None:
        raise InvalidInput("operation id", "`operations cancel` needs the operation's ID")
    with unit_of_work() as session:
        cancelled = operations.cancel_operation(
            session, args.operation_id, actor=output.actor(args), reason=args.reason
        )
        data = records.operation(cancelled)
    return output.emit(args, data, lambda d: f"operation {d['operation_id']} {d['error']}")


def operations_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no operations"
    return output.table(
        [
            "id",
            "tenant",
            "kind",
            "version",
            "percent",
            "status",
            "reason",
            "actor",
            "created",
            "finished",
        ],
        [
            (
                r["operation_id"],
                r["tenant"],
                r["kind"],
                f"v{r['version']}" if r["version"] is not None else "",
                r["traffic_percent"],
                r["status"],
                # How it ended when it did not succeed, else why the operator asked.
                r["error"] or r["reason"],
                r["actor"],
                (r["created_at"] or "-")[:19],
                (r["finished_at"] or "-")[:19],
            )
            for r in rows
        ],
    )
