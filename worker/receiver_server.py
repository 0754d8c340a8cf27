"""How the webhook receiver is served by uvicorn so that slow or idle clients cannot take it down.

Left to its defaults, uvicorn waits forever for a request's headers (only the gap *between*
requests has a timeout) and the app waits forever for a body; a few hundred connections that send
headers and no body held every file descriptor, uvicorn then logged a traceback per failed
`accept()`, and signed deliveries timed out. Here:

- `GuardedH11Protocol`: a request's headers must be complete within
  FTDEPLOY_WEBHOOK_HEADER_TIMEOUT_SECONDS of the connection (or of the previous response, plus
  the keep-alive allowance); otherwise the connection gets a 408 (or, if it sent nothing, is
  just closed). The body has its own deadline in the app (`worker.web`, 408).
- `uvicorn_options`: `limit_concurrency` (FTDEPLOY_WEBHOOK_MAX_CONNECTIONS; beyond it new
  requests get 503, not a stalled accept), `timeout_keep_alive`, and h11's bound on an
  incomplete request head (`h11_max_incomplete_event_size`).
- `raise_open_files_limit`: the soft RLIMIT_NOFILE up to the hard limit at start.
- `log_config`: uvicorn's logging, with every line masked and bounded, and the lines a flood
  produces ("Invalid HTTP request", "Exceeded concurrency limit", asyncio's failed accept)
  limited to a few per minute each, with a count of those suppressed.

This belongs behind a reverse proxy in production (timeouts, connection limits, TLS): see the
README. These bounds keep the receiver alive when the proxy lets something through.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import resource
from typing import Any

from prometheus_client import Counter
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from registry.lograte import LogRate
from registry.settings import Settings, get_settings
from worker.logs import MaskingFilter

MAX_REQUEST_HEAD_BYTES = 16 * 1024  # request line and headers; OpenAI's are well under 2 KB
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 29\r\nconnection: close\r\n\r\nrequest headers not received\n"
)

# Registered in the receiver's own registry by worker.web (served on its /metrics).
SLOW_CLIENTS = Counter(
    "ftdeploy_webhook_slow_clients",
    "Connections closed by the receiver's deadlines, by phase (headers, idle, body).",
    ["phase"],
    registry=None,
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self._header_timeout = settings.webhook_header_timeout_seconds
        self._keep_alive = settings.webhook_keep_alive_seconds
        self._header_timer: asyncio.TimerHandle | None = None
        self._armed_cycle: object = None
        self._bytes_since_armed = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._header_timeout)

    def data_received(self, data: bytes) -> None:
        self._bytes_since_armed += len(data)
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self._header_timer is not None and self.cycle is not self._armed_cycle:
            self._disarm()  # a request's headers are complete: the app has it now

    def on_response_complete(self) -> None:
        # Armed before uvicorn's own handling, which may start a pipelined request (and so
        # disarm it again through handle_events).
        if not self.transport.is_closing():
            self._arm(self._keep_alive + self._header_timeout)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._armed_cycle = self.cycle
        self._bytes_since_armed = 0
        self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.cycle is not self._armed_cycle:
            return
        if self._bytes_since_armed:
            SLOW_CLIENTS.labels("headers").inc()
            self.transport.write(_REQUEST_TIMEOUT)
        else:
            SLOW_CLIENTS.labels("idle").inc()
        self.transport.close()


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit; returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (hard, 1 << 20, 65536):
        if target == resource.RLIM_INFINITY or (soft != resource.RLIM_INFINITY and target <= soft):
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return soft, target
    return soft, soft


class BoundedLogFilter(MaskingFilter):
    """Masked and bounded like ours, and at most a few lines per minute of each message."""

    def __init__(self, burst: int = 5, per_seconds: float = 60.0) -> None:
        super().__init__()
        self._rate = LogRate(burst=burst, per_seconds=per_seconds)

    def filter(self, record: logging.LogRecord) -> bool:
        # Keyed by the message's template (uvicorn's and asyncio's are fixed texts).
        allowed, suppressed = self._rate.allow((record.name, str(record.msg)[:200]))
        if not allowed:
            return False
        super().filter(record)
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} similar lines suppressed)"
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with our filters (a dict: each server process of
    `--workers N` builds its own handlers from it)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {
        "bounded": {"()": "worker.receiver_server.BoundedLogFilter"},
        "masked": {"()": "worker.logs.MaskingFilter"},
    }
    config["handlers"]["default"]["filters"] = ["bounded"]
    config["handlers"]["access"]["filters"] = ["masked"]  # one line per request: not limited
    config["loggers"]["asyncio"] = {"handlers": ["default"], "level": "WARNING", "propagate": False}
    return config


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments for `uvicorn.run` that bound slow and idle clients."""
    return {
        "http": GuardedH11Protocol,
        "limit_concurrency": settings.webhook_max_connections,
        "timeout_keep_alive": settings.webhook_keep_alive_seconds,
        "h11_max_incomplete_event_size": MAX_REQUEST_HEAD_BYTES,
        "log_config": log_config(),
    }


def run(factory: str, settings: Settings, host: str, port: int, workers: int) -> int:
    """Serve the ASGI app that `factory` (an import string, so that `workers` > 1 can start that
    many processes) builds, with the guards above, until SIGTERM/SIGINT (graceful: in-flight
    requests end). Refuses to start (SchemaNotCurrent) on a database that is not migrated: every
    request would fail."""
    import uvicorn

    from worker import logs
    from worker.logs import event
    from worker.startup import check_database

    logs.configure(as_json=settings.log_json)
    log = logging.getLogger("ftdeploy.server")
    warning = check_database(settings)
    if warning:
        event(log, "server.start_warning", logging.WARNING, reason=warning)
    before, after = raise_open_files_limit()
    if after != before:
        event(log, "server.open_files_limit", before=before, after=after)
    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        server_header=False,
        timeout_graceful_shutdown=20,
        log_level="info",
        **uvicorn_options(settings),
    )
    return 0
