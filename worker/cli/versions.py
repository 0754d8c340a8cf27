"""`ftdeploy versions`, `history`, `activity` and `resolve`: a tenant's versions, what changed
them, and what a request would be served."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from registry import audit, audit_events, records, versions
from registry.db import session_factory, unit_of_work
from registry.routing import Router
from registry.tenants import find_tenant
from worker.cli import output

if TYPE_CHECKING:
    from worker.cli.main import Commands


def add_commands(commands: Commands) -> None:
    listing = commands.command("versions", cmd_versions, "list a tenant's versions")
    listing.add_argument("slug")

    trail = commands.command("history", cmd_history, "a tenant's audit trail of traffic changes")
    trail.add_argument("slug")
    trail.add_argument("--limit", type=int, default=50)

    other = commands.command(
        "activity", cmd_activity, "a tenant's deployments, operations and job events, with reasons"
    )
    other.add_argument("slug")
    other.add_argument("--limit", type=int, default=50)

    resolve = commands.command("resolve", cmd_resolve, "print the model a request would use")
    resolve.add_argument("slug")
    resolve.add_argument("--subject", help="user or session key: the choice is sticky per key")


def cmd_versions(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = [records.version(v) for v in versions.list_versions(session, args.slug)]
    return output.emit(args, data, versions_text)


def cmd_history(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        traffic = [records.traffic_event(e) for e in audit.history(session, args.slug, args.limit)]
        tenant = find_tenant(session, args.slug)
        changes = [
            records.audit_event(e)
            for e in audit_events.audit_events(session, tenant.id, args.limit)
        ]
        other = [records.activity(a) for a in audit.activity(session, args.slug, args.limit)]
    # One trail, newest first: traffic changes (`kind` "traffic": `before`/`after` are splits)
    # and the others (`kind` "audit": policy, pause, resume, refused claims; `before`/`after`
    # are the fields that changed).
    data = sorted(traffic + changes, key=lambda row: row["at"] or "", reverse=True)[: args.limit]
    return output.emit(args, data, lambda rows: history_text(rows, other))


def cmd_activity(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = [records.activity(a) for a in audit.activity(session, args.slug, args.limit)]
    return output.emit(args, data, activity_text)


def cmd_resolve(args: argparse.Namespace) -> int:
    """The model id; with --json the same shape as the HTTP API's resolve (`model` null and
    `reason` "no_model" when nothing serves, exit status 4)."""
    router = Router(session_factory(), staleness=0)
    snapshot = router.snapshot(args.slug)
    model = snapshot.pick(args.subject)
    if model is None:
        reason = "no_model"
    elif snapshot.only is not None:
        reason = "single_version"
    else:
        reason = "sticky_split" if args.subject is not None else "weighted_random"
    data = {
        "tenant": args.slug,
        "subject": args.subject,
        "model": model,
        "model_id": model,  # the key `resolve --json` always had
        "version": (
            snapshot.versions[snapshot.model_ids.index(model)]
            if model in snapshot.model_ids
            else None
        ),
        "reason": reason,
    }
    if model is None:
        if args.json:
            output.emit(args, data, str)
        else:
            print(f"no model: tenant {args.slug!r} has no version in production", file=sys.stderr)
        return output.NO_MODEL
    return output.emit(args, data, lambda d: d["model_id"])


def versions_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no versions yet"
    return output.table(
        ["VERSION", "STATUS", "TRAFFIC", "MODEL", "DEPLOYED", "ROLLED BACK"],
        [
            [
                r["name"],
                r["status"],
                f"{r['traffic_percent']}%",
                r["model_id"],
                (r["deployed_at"] or "-")[:19],
                (r["rolled_back_at"] or "yes")[:19] if r["rolled_back"] else "-",
            ]
            for r in rows
        ],
    )


def history_text(rows: list[dict[str, Any]], other: list[dict[str, Any]] | None = None) -> str:
    text = _traffic_text(rows)
    if other:
        text += "\n\nDeployments, operations and events:\n" + activity_text(other)
    return text


def _traffic_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no traffic changes yet"
    return output.table(
        ["AT", "ACTION", "ACTOR", "BEFORE", "AFTER", "REASON"],
        [
            [r["at"][:19], r["action"], r["actor"], *_before_after(r), r["reason"] or ""]
            for r in rows
        ],
    )


def _before_after(row: dict[str, Any]) -> tuple[str, str]:
    if row["kind"] == "traffic":
        return output.split_text(row["before"]), output.split_text(row["after"])
    before = " ".join(f"{k}={_value(v)}" for k, v in row["before"].items())
    after = " ".join(f"{k}={_value(v)}" for k, v in row["after"].items())
    return before or "-", after or "-"


def _value(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def activity_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "nothing yet"
    return output.table(
        ["AT", "KIND", "SUBJECT", "STATUS", "DETAIL"],
        [[r["at"][:19], r["kind"], r["subject"], r["status"], r["detail"] or ""] for r in rows],
    )
