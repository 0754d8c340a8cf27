"""What every command gives back: its data (a table for people, JSON with --json) and its exit
status, one set of formatting helpers and one list of exit codes for every command group."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

# Exit statuses. Refusals raised as registry errors carry their own (`FtdeployError.exit_code`:
# 2 bad input, 3 not found, 70 a broken invariant); `worker.cli.main` maps every exception.
OK = 0
FAILED = 1  # the operation ran and failed, or the database refused or was away
BAD_INPUT = 2
NOT_FOUND = 3
NO_MODEL = 4  # `resolve`: the tenant has no version in production
STILL_RUNNING = 5  # `--wait` gave up (timeout, Ctrl-C) before the operation ended
NOT_SENT = 6  # recorded, but the broker was away: the reconciler sends it
INTERNAL = 70  # a broken invariant or an unexpected error: a bug

# The one table of exit statuses: `ftdeploy --help` prints it, the README repeats it (a test
# keeps the two equal).
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (OK, "success"),
    (
        FAILED,
        "failed: the operation ran and failed or did not run (stale, expired, cancelled), the "
        "current state refused it (tenant exists, nothing to roll back, a job that belongs to "
        "another tenant, an operation that can no longer be cancelled), or the database refused "
        "the change or was unavailable",
    ),
    (
        BAD_INPUT,
        "bad input: an argument or a setting is invalid, or the database schema is not current "
        "(run `ftdeploy db upgrade`)",
    ),
    (NOT_FOUND, "not found: tenant, version, run, operation or key"),
    (NO_MODEL, "`resolve`: the tenant has no version in production"),
    (
        STILL_RUNNING,
        "`--wait` gave up (its timeout, or Ctrl-C) before the operation ended: it is still "
        "queued (`ftdeploy operations cancel ID` cancels it)",
    ),
    (
        NOT_SENT,
        "the operation (or the evaluation's resume) is recorded but the broker was unavailable: "
        "beat's reconciler sends it when the broker is back (an operation, unless it expires "
        "first)",
    ),
    (INTERNAL, "internal error: a broken traffic invariant or an unexpected error (a bug)"),
)


def exit_codes_text() -> str:
    """The exit-status table as `ftdeploy --help` shows it."""
    lines = ["exit status:"]
    lines += [f"  {code:<3} {meaning}" for code, meaning in EXIT_CODES]
    lines.append(
        "with --json, data goes to stdout and an error to stderr as one line of JSON: "
        '{"error": {"type": ..., "message": ..., "exit_code": ...}}'
    )
    return "\n".join(lines)


def error(args: argparse.Namespace | None, kind: str, message: str, code: int) -> int:
    """Report a failure on stderr (one line of JSON with --json) and return its exit status."""
    if args is not None and getattr(args, "json", False):
        body = {"error": {"type": kind, "message": message, "exit_code": code}}
        print(json.dumps(body), file=sys.stderr)
    else:
        print(f"error: {message}", file=sys.stderr)
    return code


def emit(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> int:
    """Print `data` as JSON (with --json) or as `text(data)`; the command succeeded."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text(data))
    return OK


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def split_text(split: dict[str, int]) -> str:
    """A traffic split as `v1:80% v2:20%`, `-` when nothing serves."""
    return " ".join(f"v{k}:{v}%" for k, v in split.items()) or "-"


def add_actor(parser: argparse.ArgumentParser) -> None:
    """`--actor NAME`: who asks, kept in the audit trail (default: the operating-system user)."""
    parser.add_argument(
        "--actor", help="who asks, kept in the audit trail (default: your user name)"
    )


def actor(args: argparse.Namespace) -> str:
    """The actor of a command: `--actor`, else the operating-system user, else "operator"."""
    from registry import validation

    given = getattr(args, "actor", None)
    if given is not None:
        return validation.actor(given)
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment and no passwd entry
        name = ""
    return name.strip()[:200] or "operator"
