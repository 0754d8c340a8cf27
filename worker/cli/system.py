"""`ftdeploy db upgrade`, `config`, `worker`, `webhooks serve`, `demo` and `fake-openai`:
running ftdeploy itself. None of them needs a current schema first (`database=False`): the
servers and the worker check it themselves at start."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from registry.settings import effective_settings, get_settings
from worker.cli import output

if TYPE_CHECKING:
    from worker.cli.main import Commands


def add_commands(commands: Commands) -> None:
    db = commands.group("db", "database schema")
    db.command(
        "upgrade",
        cmd_db_upgrade,
        "apply migrations (says from which revision to which)",
        json_out=False,
        database=False,
    )

    commands.command("config", cmd_config, "the settings in force, secrets masked", database=False)

    run = commands.command(
        "worker",
        cmd_worker,
        "run the worker and beat on this machine",
        json_out=False,
        database=False,
    )
    run.add_argument("--concurrency", type=int, default=2)
    run.add_argument("--no-beat", action="store_true")

    demo = commands.command(
        "demo",
        cmd_demo,
        "the whole flow on embedded defaults",
        json_out=False,
        database=False,
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo's data directory")

    fake = commands.command(
        "fake-openai",
        cmd_fake_openai,
        "a local fake OpenAI, to try ftdeploy without an OpenAI key (prints OPENAI_BASE_URL)",
        json_out=False,
        database=False,
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=0, help="0 picks a free port")
    fake.add_argument(
        "--job",
        action="append",
        default=[],
        metavar="ID[:TENANT]",
        help="a succeeded job to serve (repeatable); TENANT goes in its metadata",
    )

    hooks = commands.group("webhooks", "the OpenAI webhook receiver")
    serve = hooks.command(
        "serve",
        cmd_webhooks_serve,
        "serve POST /webhooks/openai and GET /healthz (needs FTDEPLOY_WEBHOOK_SECRET)",
        json_out=False,
        database=False,
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes")


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from migrations import upgrade
    from registry.schema import current_revisions, head_revisions

    settings = get_settings()
    if settings.is_embedded_database:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.database_url_value
    before = current_revisions(url)
    upgrade(url)
    after = current_revisions(url)
    if before == after:
        print(f"database schema already at head ({_revisions(after or head_revisions())})")
    else:
        print(f"database schema upgraded: {_revisions(before)} -> {_revisions(after)}")
    return 0


def _revisions(revisions: tuple[str, ...]) -> str:
    return ", ".join(revisions) or "empty (never migrated)"


def cmd_config(args: argparse.Namespace) -> int:
    return output.emit(
        args,
        effective_settings(),
        lambda data: "\n".join(f"{name:<40} {_shown(value)}" for name, value in data.items()),
    )


def _shown(value: object) -> str:
    return "(not set)" if value is None else str(value)


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


def cmd_fake_openai(args: argparse.Namespace) -> int:
    # Imported here only, as for `demo`: the fake is a tool for trying ftdeploy, not a door.
    from worker.demo.fake_openai import main as fake_main

    argv = ["--host", args.host, "--port", str(args.port)]
    for job in args.job:
        argv += ["--job", job]
    return fake_main(argv, prog="ftdeploy fake-openai")
