"""`ftdeploy db upgrade`, `worker`, `webhooks serve` and `demo`: running ftdeploy itself."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from registry.settings import get_settings

if TYPE_CHECKING:
    from worker.cli.main import Commands


def add_commands(commands: Commands) -> None:
    db = commands.group("db", "database schema")
    db.command("upgrade", cmd_db_upgrade, "apply migrations", json_out=False)

    run = commands.command(
        "worker", cmd_worker, "run the worker and beat on this machine", json_out=False
    )
    run.add_argument("--concurrency", type=int, default=2)
    run.add_argument("--no-beat", action="store_true")

    demo = commands.command("demo", cmd_demo, "the whole flow on embedded defaults", json_out=False)
    demo.add_argument("--keep", action="store_true", help="keep the demo's data directory")

    hooks = commands.group("webhooks", "the OpenAI webhook receiver")
    serve = hooks.command(
        "serve",
        cmd_webhooks_serve,
        "serve POST /webhooks/openai and GET /healthz (needs FTDEPLOY_WEBHOOK_SECRET)",
        json_out=False,
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes")


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from migrations import upgrade

    upgrade(get_settings().database_url_value)
    print("database schema is up to date")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.run import run_worker

    return run_worker(concurrency=args.concurrency, beat=not args.no_beat)


def cmd_demo(args: argparse.Namespace) -> int:
    # Imported here only: the demo drives the CLI's `main`, never the other way round at import.
    from worker.demo.flow import run_demo

    return run_demo(keep=args.keep)


def cmd_webhooks_serve(args: argparse.Namespace) -> int:
    from worker.web import serve

    return serve(host=args.host, port=args.port, workers=args.workers)
