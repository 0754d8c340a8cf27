"""The HTTP API's commands: `ftdeploy keys create|list|revoke` and `ftdeploy serve`.

Registered on the main parser by `add_commands(subparsers)`. A new key is printed once, by
`keys create`; it is never stored, listed or logged (only its SHA-256 is kept).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from registry import keys
from registry.db import unit_of_work
from registry.models import KeyRole
from worker.cli import output

if TYPE_CHECKING:
    from worker.cli.main import Commands


def cmd_keys_create(args: argparse.Namespace) -> int:
    with unit_of_work() as session:
        row, clear = keys.create_key(session, args.name, args.role, args.tenant)
        data: dict[str, Any] = {"name": row.name, "key_id": row.key_id, "role": row.role}
        data["key"] = clear
    data["tenants"] = sorted(args.tenant) or None
    return output.emit(args, data, _created_text)


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
    return output.emit(args, data, _list_text)


def _list_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no keys yet"
    return output.table(
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
    return output.emit(args, data, lambda d: f"revoked {d['name']}")


def cmd_serve(args: argparse.Namespace) -> int:
    from worker.http.app import serve

    return serve(host=args.host, port=args.port, workers=args.workers)


def add_commands(commands: Commands) -> None:
    keys_group = commands.group("keys", "API keys of the HTTP API")
    create = keys_group.command("create", cmd_keys_create, "create a key and print it (once)")
    create.add_argument("name", help="who uses it (kept in the audit trail as the actor)")
    create.add_argument("--role", required=True, choices=[r.value for r in KeyRole])
    create.add_argument(
        "--tenant",
        action="append",
        default=[],
        metavar="SLUG",
        help="only this tenant (repeatable); without it, every tenant",
    )
    keys_group.command("list", cmd_keys_list, "list keys (never the keys themselves)")
    revoke = keys_group.command("revoke", cmd_keys_revoke, "revoke a key")
    revoke.add_argument("name")

    serve = commands.command(
        "serve",
        cmd_serve,
        "serve the HTTP API (and the webhook receiver when FTDEPLOY_WEBHOOK_SECRET is set)",
        json_out=False,
        database=False,
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes")
