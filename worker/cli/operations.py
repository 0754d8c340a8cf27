"""`ftdeploy promote` and `rollback`: operators' queued operations, optionally waited for."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from registry import operations, records, validation
from registry.db import unit_of_work
from registry.models import OperationKind, OperationStatus
from worker.cli import output

if TYPE_CHECKING:
    from worker.cli.main import Commands


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
        output.add_actor(sub)


def cmd_promote(args: argparse.Namespace) -> int:
    return _queue(args, OperationKind.PROMOTE, version=args.version, traffic_percent=args.traffic)


def cmd_rollback(args: argparse.Namespace) -> int:
    return _queue(args, OperationKind.ROLLBACK)


def _queue(args: argparse.Namespace, kind: OperationKind, **arguments: Any) -> int:
    if "version" in arguments:
        arguments["version"] = validation.version_number(arguments["version"])
    with unit_of_work() as session:
        # The worker is asked to run it after the commit.
        operation = operations.submit_operation(
            session,
            args.slug,
            kind,
            actor=output.actor(args),
            reason=args.reason,
            **arguments,
        )
        operation_id = str(operation.id)
    if not args.wait:
        return output.emit(
            args, {"operation_id": operation_id, "status": "queued"}, lambda d: d["operation_id"]
        )
    return _wait_for(args, operation_id)


def _wait_for(args: argparse.Namespace, operation_id: str) -> int:
    deadline = time.monotonic() + args.timeout
    while True:
        with unit_of_work() as session:
            operation = operations.get_operation(session, operation_id)
            data = records.operation(operation)
        if operation.status in (OperationStatus.SUCCEEDED, OperationStatus.FAILED):
            output.emit(args, data, operation_text)
            return output.OK if operation.status == OperationStatus.SUCCEEDED else output.FAILED
        if time.monotonic() > deadline:
            print(
                f"operation {operation_id} still {data['status']} after {args.timeout:g} s "
                "(is a worker running?)",
                file=sys.stderr,
            )
            return output.STILL_RUNNING
        time.sleep(0.1)


def operation_text(data: dict[str, Any]) -> str:
    if data["status"] == OperationStatus.FAILED:
        return f"{data['kind']} failed: {data['error']}"
    result = data["result"] or {}
    return (
        f"{data['kind']} {data['status']}: {output.split_text(result.get('before', {}))} -> "
        f"{output.split_text(result.get('after', {}))} ({result.get('reason', '')})"
    )
