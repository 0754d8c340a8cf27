"""`ftdeploy notify …`: notification endpoints — add (the secret is printed once), list, test,
deliveries, enable, remove. Registered on the main parser by `worker.cli.commands`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from registry.db import unit_of_work
from registry.models import utcnow
from registry.notify import delivery, endpoints, render, sender
from registry.settings import get_settings
from worker.cli import views


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
        data = {
            "name": added.endpoint.name,
            "tenant": args.tenant,
            "format": added.endpoint.format,
            "url": added.endpoint.url_hint,
            "events": list(added.endpoint.event_types) or ["*"],
            # Shown this once: only its encryption is stored.
            "secret": added.secret,
        }
    return views.emit(args, data, _added_text)


def _added_text(data: dict[str, Any]) -> str:
    text = f"added {data['format']} endpoint {data['name']} for {data['tenant'] or 'every tenant'}"
    text += f", events: {', '.join(data['events'])}"
    if data["secret"]:
        text += f"\nsigning secret (shown once; verify webhook-signature with it): {data['secret']}"
    return text


def cmd_list(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = endpoints.list_endpoints(session, args.tenant)
    return views.emit(args, data, _list_text)


def _state(row: dict[str, Any]) -> str:
    if not row["enabled"]:
        return f"DISABLED ({row['disabled_reason']})"
    if row["failing_since"]:
        return f"failing since {row['failing_since']}"
    return "ok"


def _list_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no notification endpoints"
    return views.table(
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


def cmd_test(args: argparse.Namespace) -> int:
    settings = get_settings()
    with unit_of_work() as session:
        endpoint = endpoints.find_endpoint(session, args.name)
        outgoing = delivery.test_outgoing(session, endpoint, utcnow())
    request = render.request_for(
        outgoing.format, outgoing.message, outgoing.secret, utcnow(), settings.public_url
    )
    with sender.make_client() as client:
        sent = sender.post(
            client, outgoing.url, request.body, request.headers, settings.notify_timeout_seconds
        )
    outcome = delivery.classify(sent)
    data = {
        "name": args.name,
        "webhook_id": outgoing.message.id,
        "status_code": sent.status_code,
        "error": sent.error,
        "outcome": outcome.value,
        "duration_ms": round(sent.duration_ms, 1),
    }
    views.emit(args, data, _test_text)
    return 0 if outcome is delivery.Outcome.DELIVERED else 1


def _test_text(data: dict[str, Any]) -> str:
    answer = f"HTTP {data['status_code']}" if data["status_code"] is not None else data["error"]
    return f"test to {data['name']}: {answer} in {data['duration_ms']:.0f} ms ({data['outcome']})"


def cmd_deliveries(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = endpoints.deliveries(session, args.name, limit=args.limit, status=args.status)
    return views.emit(args, data, _deliveries_text)


def _deliveries_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no deliveries"
    return views.table(
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
        endpoints.enable_endpoint(session, args.name)
    return views.emit(args, {"name": args.name, "enabled": True}, lambda d: f"enabled {d['name']}")


def cmd_remove(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        endpoints.remove_endpoint(session, args.name)
    return views.emit(args, {"name": args.name, "removed": True}, lambda d: f"removed {d['name']}")


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `notify …` with the CLI's `command(name, handler, help)` helper."""
    group = command(
        "notify", _usage, "notification endpoints: signed webhooks and Slack", json_out=False
    )
    sub = group.add_subparsers(dest="notify", required=True, metavar="COMMAND")

    add = command("add", cmd_add, "add an endpoint (prints its signing secret once)", parent=sub)
    add.add_argument("name")
    add.add_argument("--url", required=True, help="http:// or https:// URL to POST to")
    add.add_argument("--tenant", help="only this tenant's events (default: every tenant's)")
    add.add_argument("--events", nargs="+", metavar="TYPE", help="event types (default: all)")
    add.add_argument("--format", default="webhook", help="webhook (Standard Webhooks) or slack")

    listing = command("list", cmd_list, "endpoints, their backlog and state", parent=sub)
    listing.add_argument("--tenant", help="endpoints that get this tenant's events")

    test = command("test", cmd_test, "send a test notification now and show the answer", parent=sub)
    test.add_argument("name")

    sent = command(
        "deliveries", cmd_deliveries, "an endpoint's deliveries and attempts", parent=sub
    )
    sent.add_argument("name")
    sent.add_argument("--status", help="pending, delivered or failed")
    sent.add_argument("--limit", type=int, default=50)

    enable = command("enable", cmd_enable, "enable a disabled endpoint again", parent=sub)
    enable.add_argument("name")

    remove = command("remove", cmd_remove, "remove an endpoint and its deliveries", parent=sub)
    remove.add_argument("name")


def _usage(args: argparse.Namespace) -> int:  # argparse requires a subcommand; never reached
    return 2
