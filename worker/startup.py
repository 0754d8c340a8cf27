"""What a worker checks before it takes work, and refuses to start without.

On Celery's `worker_init` (main process, before the pool forks and before beat starts), so
`celery -A worker.app worker` (the Procfile) and `ftdeploy worker` refuse alike:

- the schema is at the migrations' head (`registry.schema`); the embedded SQLite default is
  upgraded first, as it always was. A database that cannot be reached is only warned about: the
  tasks retry database outages, and a worker that waits for its database is normal at boot;
- an OpenAI API key is set, unless OPENAI_BASE_URL points at this machine (a local fake OpenAI),
  where a missing key is only warned about: otherwise every event would fail at its first
  attempt, after the worker had said it was ready.

A refusal prints one line per problem to stderr (`error: …`, no traceback) and exits with the
error's exit code. `settings_or_exit` does the same for unusable settings, for the doors whose
first contact with the settings happens at import (the Celery app module).
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from typing import Any, NoReturn
from urllib.parse import urlsplit

from celery import signals
from sqlalchemy.exc import OperationalError

from registry.errors import FtdeployError, StartRefused
from registry.masking import mask
from registry.schema import require_current_schema
from registry.settings import Settings, get_settings

log = logging.getLogger("ftdeploy.worker")

# Warnings found at worker_init, logged once logging is up (Celery sets it up after worker_init).
_warnings: list[tuple[str, dict[str, Any]]] = []


def is_loopback_url(url: str | None) -> bool:
    """True when `url`'s host is this machine (localhost, 127.0.0.0/8, ::1)."""
    if not url:
        return False
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_openai_key(settings: Settings) -> str | None:
    """Raise StartRefused without an API key, unless OPENAI_BASE_URL is a local fake; returns a
    warning to log in that case, else None."""
    if settings.openai_api_key_value:
        return None
    if is_loopback_url(settings.openai_base_url):
        return "OPENAI_API_KEY is not set; OPENAI_BASE_URL is local, so starting anyway"
    raise StartRefused(
        "OPENAI_API_KEY is not set: every job-finished event would fail at its first attempt "
        "(set it, or point OPENAI_BASE_URL at a local fake OpenAI for tests)"
    )


def check_database(settings: Settings) -> str | None:
    """Upgrade the embedded database; raise SchemaNotCurrent unless the schema is current.
    Returns a warning when the database cannot be reached (nothing could be checked)."""
    url = settings.database_url_value
    if url.rstrip("/") == "sqlite:" or ":memory:" in url or "mode=memory" in url:
        return None  # each connection its own empty database: nothing to check or keep
    if settings.is_embedded_database:
        from migrations import upgrade

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(url)
    try:
        require_current_schema(url)
    except OperationalError as error:
        first = str(error.orig or error).strip().splitlines()[:1]
        return mask(f"database unreachable, schema not checked: {' '.join(first)}")[:300]
    return None


def check_worker_start(settings: Settings) -> list[str]:
    """Every check above; raises the first refusal, returns the warnings."""
    warnings = [check_openai_key(settings), check_database(settings)]
    return [warning for warning in warnings if warning]


def refuse(error: FtdeployError) -> NoReturn:
    """Print the refusal, one `error: …` line per line of its message, and exit."""
    for line in str(error).splitlines() or [type(error).__name__]:
        print(f"error: {mask(line)}", file=sys.__stderr__, flush=True)
    raise SystemExit(error.exit_code)


def settings_or_exit() -> Settings:
    try:
        return get_settings()
    except FtdeployError as error:
        refuse(error)


@signals.worker_init.connect
def _on_worker_init(**_: Any) -> None:
    try:
        warnings = check_worker_start(get_settings())
    except FtdeployError as error:
        # SystemExit, not an exception: Celery logs and ignores exceptions of signal handlers.
        refuse(error)
    _warnings.extend(("worker.start_warning", {"reason": warning}) for warning in warnings)


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    from worker.logs import event

    for name, fields in _warnings:
        event(log, name, logging.WARNING, **fields)
    _warnings.clear()
