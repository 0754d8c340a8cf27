"""`ftdeploy notify …`: notification endpoints — add (the secret is printed once), list, show,
test, deliveries, enable, disable, replay, remove. Registered on the main parser by
`worker.cli.commands`; the same registry calls as the HTTP API's (`worker.http.notifications`).

A name is unique per owner (a tenant, or the global endpoints): the commands that take one take
`--tenant SLUG` or `--global` too, needed only when more than one endpoint has the name."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from registry.db import unit_of_work
from registry.notify import delivery, endpoints, owners, probe, replay
from registry.settings import get_settings
from worker.cli import output

if TYPE_CHECKING:
    from worker.cli.main import Commands


def _owner(args: argparse.Namespace) -> owners.Owner:
    return owners.owner_of(args.tenant, args.is_global)


def cmd_add(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        added = endpoints.add_endpoint(
            session,
            args.name,
            args.url,
            tenant_ref=args.tenant,
            events=args.events,
            format=args.format,
        )
        # The secret is in it this once: only its encryption is stored.
        data = endpoints.added_record(session, added)
    return output.emit(args, data, _added_text)


def _added_text(data: dict[str, Any]) -> str:
    text = f"added {data['format']} endpoint {data['name']} for {data['tenant'] or 'every tenant'}"
    text += f", events: {', '.join(data['events'])}"
    if data["secret"]:
        text += f"\nsigning secret (shown once; verify webhook-signature with it): {data['secret']}"
    return text


def cmd_list(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = endpoints.list_endpoints(session, args.tenant)
    return output.emit(args, data, _list_text)


def _state(row: dict[str, Any]) -> str:
    if not row["enabled"]:
        return f"DISABLED ({row['disabled_reason']})"
    if row["failing_since"]:
        return f"failing since {row['failing_since']}"
    return "ok"


def _list_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no notification endpoints"
    return output.table(
        ["NAME", "TENANT", "FORMAT", "URL", "EVENTS", "PENDING", "OLDEST", "STATE"],
        [
            [
                r["name"],
                r["tenant"] or "*",
                r["format"],
                r["url"],
                ",".join(r["events"]),
                r["pending"],
                f"{r['oldest_pending_seconds']:.0f}s"
                if r["oldest_pending_seconds"] is not None
                else "-",
                _state(r),
            ]
            for r in rows
        ],
    )


def cmd_show(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = endpoints.show_endpoint(session, args.name, owner=_owner(args))
    return output.emit(args, data, lambda row: _list_text([row]))


def cmd_test(args: argparse.Namespace) -> int:
    settings = get_settings()
    with unit_of_work() as session:
        outgoing = probe.prepare(session, args.name, owner=_owner(args))
    data = probe.send(
        outgoing, timeout=settings.notify_timeout_seconds, public_url=settings.public_url
    )
    output.emit(args, data, _test_text)
    return 0 if data["outcome"] == delivery.Outcome.DELIVERED else 1


def _test_text(data: dict[str, Any]) -> str:
    answer = f"HTTP {data['status_code']}" if data["status_code"] is not None else data["error"]
    return f"test to {data['name']}: {answer} in {data['duration_ms']:.0f} ms ({data['outcome']})"


def cmd_deliveries(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = endpoints.deliveries(
            session, args.name, limit=args.limit, status=args.status, owner=_owner(args)
        )
    return output.emit(args, data, _deliveries_text)


def _deliveries_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no deliveries"
    return output.table(
        ["SEQ", "TYPE", "STATUS", "ATTEMPTS", "CODES", "NEXT RETRY", "WEBHOOK-ID"],
        [
            [
                r["seq"],
                r["type"],
                r["status"],
                r["attempts"],
                " ".join(str(a["status_code"] or "-") for a in r["history"]) or "-",
                r["next_attempt_at"] or "-",
                r["webhook_id"],
            ]
            for r in rows
        ],
    )


def cmd_enable(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        endpoints.enable_endpoint(session, args.name, owner=_owner(args))
    return output.emit(args, {"name": args.name, "enabled": True}, lambda d: f"enabled {d['name']}")


def cmd_disable(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        endpoint = endpoints.disable_endpoint(
            session, args.name, actor=output.actor(args), reason=args.reason, owner=_owner(args)
        )
        data = endpoints.endpoint_record(session, endpoint)
    return output.emit(args, data, lambda d: f"disabled {d['name']} ({d['disabled_reason']})")


def cmd_replay(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        # Sent to the worker after the commit.
        data = replay.replay(
            session, args.name, since=args.since, event=args.event, owner=_owner(args)
        ).record()
    return output.emit(args, data, _replay_text)


def _replay_text(data: dict[str, Any]) -> str:
    return (
        f"replaying to {data['name']}: {data['requeued']} failed, {data['missed']} missed "
        "while disabled"
    )


def cmd_remove(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        endpoints.remove_endpoint(session, args.name, owner=_owner(args))
    return output.emit(args, {"name": args.name, "removed": True}, lambda d: f"removed {d['name']}")


def add_commands(commands: Commands) -> None:
    notify = commands.group("notify", "notification endpoints: signed webhooks and Slack")
    add = notify.command("add", cmd_add, "add an endpoint (prints its signing secret once)")
    add.add_argument("name")
    add.add_argument("--url", required=True, help="http:// or https:// URL to POST to")
    add.add_argument("--tenant", help="only this tenant's events (default: every tenant's)")
    add.add_argument("--events", nargs="+", metavar="TYPE", help="event types (default: all)")
    add.add_argument("--format", default="webhook", help="webhook (Standard Webhooks) or slack")

    listing = notify.command("list", cmd_list, "endpoints, their backlog and state")
    listing.add_argument("--tenant", help="endpoints that get this tenant's events")

    show = notify.command("show", cmd_show, "one endpoint, its backlog and state")
    _named(show)

    test = notify.command("test", cmd_test, "send a test notification now and show the answer")
    _named(test)

    sent = notify.command("deliveries", cmd_deliveries, "an endpoint's deliveries and attempts")
    _named(sent)
    sent.add_argument("--status", help="pending, delivered or failed")
    sent.add_argument("--limit", type=int, default=50)

    enable = notify.command("enable", cmd_enable, "enable a disabled endpoint again")
    _named(enable)

    disable = notify.command("disable", cmd_disable, "stop sending to an endpoint for now")
    _named(disable)
    disable.add_argument("--reason", help="why (shown by notify list)")
    output.add_actor(disable)

    again = notify.command(
        "replay", cmd_replay, "send again what failed, and what was missed while disabled"
    )
    _named(again)
    again.add_argument("--since", metavar="2h|ISO-TIME", help="only events written since")
    again.add_argument("--event", metavar="WEBHOOK-ID", help="only this notification")

    remove = notify.command("remove", cmd_remove, "remove an endpoint and its deliveries")
    _named(remove)


def _named(command: argparse.ArgumentParser) -> None:
    """NAME and whose it is: needed only when more than one endpoint has the name."""
    command.add_argument("name")
    owner = command.add_mutually_exclusive_group()
    owner.add_argument("--tenant", metavar="SLUG", help="the endpoint of this tenant")
    owner.add_argument(
        "--global",
        dest="is_global",
        action="store_true",
        help="the global endpoint (every tenant's events)",
    )
