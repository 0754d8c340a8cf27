"""Structured logs: an event name and fields, as `key=value` text or one JSON object per line.

Secrets never reach a log: fields are ids, counts and reasons, and every string that reaches a
line (field, message, traceback) goes through `registry.masking.mask` first, because a reason may
quote an external error (a driver's, an HTTP library's) that quotes a secret.

Bounded: a field comes from outside as often as not (a job id, a tenant slug, a reason quoting a
peer), so each is cut to MAX_FIELD_CHARS with a marker saying how much was dropped, a traceback
to MAX_EXCEPTION_CHARS; in text lines, line breaks in a field are escaped (a field cannot forge
a line of its own). `MaskingFilter` does the same for the lines of other libraries' loggers
(Celery, uvicorn, asyncio).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from registry.masking import mask

MAX_FIELD_CHARS = 1000
MAX_EXCEPTION_CHARS = 10_000
_PLAIN = (bool, int, float, type(None))


def cut(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """`text` masked and at most about `limit` characters, with a marker when it was cut."""
    # Mask a bounded prefix only: masking megabytes would cost more than the line is worth.
    head = mask(text[: 4 * limit]) if len(text) > 4 * limit else mask(text)
    if len(text) <= limit and len(head) <= limit:
        return head
    return f"{head[:limit]}…[{len(text) - min(limit, len(text))} more chars cut]"


def bounded(value: Any) -> Any:
    """A log field made safe: masked, cut, JSON-friendly (numbers, booleans and None kept)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, str):
        return cut(value)
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError, RecursionError):
        return cut(repr(value)[: 4 * MAX_FIELD_CHARS])
    if len(text) <= MAX_FIELD_CHARS and mask(text) == text:
        return value
    return cut(text)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        safe = {key: bounded(value) for key, value in fields.items()}
        logger.log(level, cut(name, 200), extra={"ftdeploy_fields": safe})


def _text(value: Any) -> str:
    shown = value if isinstance(value, str) else json.dumps(value, default=str)
    return shown.replace("\r", "\\r").replace("\n", "\\n")


class EventFormatter(logging.Formatter):
    def __init__(self, as_json: bool = False) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        # Fields of records logged without `event()` (registry modules) are bounded here.
        raw: dict[str, Any] = getattr(record, "ftdeploy_fields", {})
        fields = {key: bounded(value) for key, value in raw.items()}
        message = cut(record.getMessage())
        exception = None
        if record.exc_info:
            exception = cut(self.formatException(record.exc_info), MAX_EXCEPTION_CHARS)
        if self.as_json:
            payload = {
                "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "event": message,
                **fields,
            }
            if exception:
                payload["exception"] = exception
            return json.dumps(payload, default=str)
        text = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
        stamp = self.formatTime(record, "%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {_text(message)} {text}"
        if exception:
            line += "\n" + exception
        return line.rstrip()


class MaskingFilter(logging.Filter):
    """For other libraries' handlers: the record's message and traceback masked and bounded."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and all(isinstance(a, str | int | float) for a in args):
            # Plain arguments are masked one by one: some formatters read them (uvicorn's
            # access log unpacks its five).
            record.args = tuple(cut(a, MAX_FIELD_CHARS) if isinstance(a, str) else a for a in args)
            if isinstance(record.msg, str):
                record.msg = cut(record.msg, MAX_FIELD_CHARS)
        else:
            # Anything else (an exception's repr, a mapping) is rendered, then masked whole.
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: leave it to the handler's own error path
                return True
            record.msg, record.args = cut(message, 4 * MAX_FIELD_CHARS), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = cut(record.exc_text, MAX_EXCEPTION_CHARS)
        return True


def configure(as_json: bool = False, level: int | str = logging.INFO) -> None:
    """The one log setup of every process (worker, webhook receiver): the `ftdeploy` loggers write
    one line per event to the process's real stderr."""
    # sys.__stderr__, not sys.stderr: Celery redirects sys.stderr into its own logger, which would
    # wrap each of our lines in a second format.
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(EventFormatter(as_json))
    root = logging.getLogger("ftdeploy")
    root.handlers[:] = [handler]
    root.setLevel(level or logging.INFO)
    root.propagate = False
    # The HTTP library (the openai SDK's, the notification deliveries') logs every request at
    # INFO: two lines per job event, more than the event's own line, and each one formatted and
    # written on the hot path. Its warnings pass; asked for DEBUG, so does everything.
    verbose = root.getEffectiveLevel() <= logging.DEBUG
    logging.getLogger("httpx2").setLevel(logging.DEBUG if verbose else logging.WARNING)
