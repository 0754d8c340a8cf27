"""The HTTP API's commands: `ftdeploy keys create|list|revoke` and `ftdeploy serve`.

Registered on the main parser by `add_commands(subparsers)`. A new key is printed once, by
`keys create`; it is never stored, listed or logged (only its SHA-256 is kept).
"""

from __future__ import annotations

import argparse
from typing import Any

from registry import keys
from registry.db import unit_of_work
from registry.models import KeyRole
from worker.cli import views


def cmd_keys_create(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        row, clear = keys.create_key(session, args.name, args.role, args.tenant)
        data: dict[str, Any] = {"name": row.name, "key_id": row.key_id, "role": row.role}
        data["key"] = clear
    data["tenants"] = sorted(args.tenant) or None
    return views.emit(args, data, _created_text)


def _created_text(data: dict[str, Any]) -> str:
    scope = ", ".join(data["tenants"]) if data["tenants"] else "every tenant"
    return (
        f"{data['key']}\n\n"
        f"key {data['name']!r} ({data['role']}, {scope}): shown once, only its hash is kept.\n"
        "Send it as `Authorization: Bearer <key>`."
    )


def cmd_keys_list(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        data = [vars(info) for info in keys.list_keys(session)]
    return views.emit(args, data, _list_text)


def _list_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no keys yet"
    return views.table(
        ["NAME", "ROLE", "TENANTS", "KEY ID", "CREATED", "REVOKED"],
        [
            [
                r["name"],
                r["role"],
                "all" if r["tenants"] is None else (", ".join(r["tenants"]) or "(none left)"),
                f"ftd_{r['key_id']}_…",
                r["created_at"][:19],
                (r["revoked_at"] or "-")[:19],
            ]
            for r in rows
        ],
    )


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        row = keys.revoke_key(session, args.name)
        data = {
            "name": row.name,
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        }
    return views.emit(args, data, lambda d: f"revoked {d['name']}")


def cmd_serve(args: argparse.Namespace) -> int:
    from worker.http.app import serve

    return serve(host=args.host, port=args.port, workers=args.workers)


def add_commands(subparsers: Any) -> None:
    """Add `keys …` and `serve` to the CLI's top-level subparsers."""
    group = subparsers.add_parser("keys", help="API keys of the HTTP API")
    commands = group.add_subparsers(dest="keys", required=True)

    def command(name: str, handler: Any, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--json", action="store_true", help="print JSON for scripts")
        return sub

    create = command("create", cmd_keys_create, "create a key and print it (once)")
    create.add_argument("name", help="who uses it (kept in the audit trail as the actor)")
    create.add_argument("--role", required=True, choices=[r.value for r in KeyRole])
    create.add_argument(
        "--tenant",
        action="append",
        default=[],
        metavar="SLUG",
        help="only this tenant (repeatable); without it, every tenant",
    )
    command("list", cmd_keys_list, "list keys (never the keys themselves)")
    revoke = command("revoke", cmd_keys_revoke, "revoke a key")
    revoke.add_argument("name")

    text = "serve the HTTP API (and the webhook receiver when FTDEPLOY_WEBHOOK_SECRET is set)"
    serve = subparsers.add_parser("serve", help=text, description=text)
    serve.set_defaults(handler=cmd_serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes")
