"""The `ftdeploy` command: operators' and scripts' door to the registry and the queue.

The parser is assembled here from the command groups (`tenants`, `jobs`, `versions`,
`operations`, `canary`, `system`), each of which holds its commands and how their output looks.
Every command that prints data takes --json. Errors print one line on stderr and exit non-zero;
`main` is the one place exceptions become exit statuses, and no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from registry.errors import FtdeployError
from registry.settings import get_settings
from worker.cli import (
    canary,
    jobs,
    keys,
    notify,
    operations,
    output,
    system,
    tenants,
    versions,
)

Handler = Callable[[argparse.Namespace], int]
GROUPS = (system, tenants, jobs, versions, operations, canary, keys, notify)


class Commands:
    """Where a command group adds its commands: `command(...)` for one, `group(...)` for a
    word that takes subcommands (`ftdeploy tenant add`)."""

    def __init__(self, subparsers: Any) -> None:
        self._subparsers = subparsers

    def command(
        self, name: str, handler: Handler, help_text: str, *, json_out: bool = True
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = self._subparsers.add_parser(
            name, help=help_text, description=help_text
        )
        sub.set_defaults(handler=handler)
        if json_out:
            sub.add_argument("--json", action="store_true", help="print JSON for scripts")
        return sub

    def group(self, name: str, help_text: str) -> Commands:
        parser = self._subparsers.add_parser(name, help=help_text)
        return Commands(parser.add_subparsers(dest=name.replace("-", "_"), required=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftdeploy",
        description="Take finished OpenAI fine-tuning jobs to live traffic, safely, per tenant.",
    )
    commands = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for group in GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (see `worker.cli.output` for the codes)."""
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
        return output.FAILED
    except ValueError as error:  # settings out of range, say
        print(f"error: {error}", file=sys.stderr)
        return output.BAD_INPUT


def _prepare_embedded_database(args: argparse.Namespace) -> None:
    """On the embedded default the schema is created or upgraded as needed: no extra step."""
    settings = get_settings()
    if settings.is_embedded_database and args.handler not in (
        system.cmd_db_upgrade,
        system.cmd_demo,
    ):
        from migrations import upgrade

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.database_url_value)


def run() -> None:
    """The console script: exit with `main()`'s status."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `ftdeploy versions acme | head`: the reader left, not an error
        sys.stderr.close()
        code = 0
    sys.exit(code)
