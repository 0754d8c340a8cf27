"""The `ftdeploy` command: operators' and scripts' door to the registry and the queue.

The parser is assembled here from the command groups (`tenants`, `jobs`, `versions`,
`operations`, `canary`, `system`), each of which holds its commands and how their output looks.
Every command that prints data takes --json. Errors print one line on stderr (one line of JSON
with --json) and exit non-zero; `main` is the one place exceptions become exit statuses (the
table is `worker.cli.output.EXIT_CODES`), and no traceback reaches the user.

Every command that reads or writes the database checks first, once, that its schema is current
(`registry.schema.require_current_schema`), so a database nobody migrated is refused with what
to run instead of "relation tenants does not exist".
"""

from __future__ import annotations

import argparse
import contextvars
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

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
# Set while `main` parses an argv with --json: argparse's refusals are then JSON too.
_JSON_ERRORS: contextvars.ContextVar[bool] = contextvars.ContextVar("json_errors", default=False)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        if _JSON_ERRORS.get():
            output.error(argparse.Namespace(json=True), "UsageError", message, output.BAD_INPUT)
            sys.exit(output.BAD_INPUT)
        super().error(message)


class Commands:
    """Where a command group adds its commands: `command(...)` for one, `group(...)` for a
    word that takes subcommands (`ftdeploy tenant add`). `database=False` marks a command that
    does not use the database (or checks it itself), so its schema is not checked first."""

    def __init__(self, subparsers: Any) -> None:
        self._subparsers = subparsers

    def command(
        self,
        name: str,
        handler: Handler,
        help_text: str,
        *,
        json_out: bool = True,
        database: bool = True,
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = self._subparsers.add_parser(
            name, help=help_text, description=help_text
        )
        sub.set_defaults(handler=handler, database=database)
        if json_out:
            sub.add_argument("--json", action="store_true", help="print JSON for scripts")
        return sub

    def group(self, name: str, help_text: str) -> Commands:
        parser = self._subparsers.add_parser(name, help=help_text)
        return Commands(parser.add_subparsers(dest=name.replace("-", "_"), required=True))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ftdeploy",
        description="Take finished OpenAI fine-tuning jobs to live traffic, safely, per tenant.",
        epilog=output.exit_codes_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for group in GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (see `worker.cli.output` for the codes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    token = _JSON_ERRORS.set("--json" in argv)
    try:
        args = build_parser().parse_args(argv)
    finally:
        _JSON_ERRORS.reset(token)
    try:
        if args.database:
            _prepare_embedded_database()
            from registry.schema import require_current_schema

            require_current_schema(get_settings().database_url_value)
        code: int = args.handler(args)
        return code
    except FtdeployError as error:
        return output.error(args, type(error).__name__, str(error), error.exit_code)
    except SQLAlchemyError as error:
        # The driver's message names the host, never the password; keep just its first line.
        first_line = " ".join(str(getattr(error, "orig", error)).strip().splitlines()[0:1])
        unavailable = isinstance(error, OperationalError | InterfaceError)
        what = "database unavailable" if unavailable else "database refused the change"
        kind = "DatabaseUnavailable" if unavailable else "DatabaseRefused"
        return output.error(args, kind, f"{what}: {first_line}", output.FAILED)
    except ValueError as error:  # settings out of range, say
        return output.error(args, "InvalidInput", str(error), output.BAD_INPUT)
    except Exception as error:  # a bug: still one line, no traceback
        message = f"unexpected {type(error).__name__}: {error}".splitlines()[0]
        return output.error(args, "InternalError", message, output.INTERNAL)


def _prepare_embedded_database() -> None:
    """On the embedded default the schema is created or upgraded as needed: no extra step."""
    settings = get_settings()
    if settings.is_embedded_database:
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
