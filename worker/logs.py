"""Structured logs: an event name and fields, as `key=value` text or one JSON object per line.

Secrets never reach a log: fields are ids, counts and reasons, and reasons come from our own error
messages, which are built without them.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, name, extra={"ftdeploy_fields": fields})


class EventFormatter(logging.Formatter):
    def __init__(self, as_json: bool = False) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "ftdeploy_fields", {})
        if self.as_json:
            payload = {
                "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "event": record.getMessage(),
                **fields,
            }
            if record.exc_info:
                payload["exception"] = self.formatException(record.exc_info)
            return json.dumps(payload, default=str)
        text = " ".join(f"{key}={value}" for key, value in fields.items())
        stamp = self.formatTime(record, "%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {record.getMessage()} {text}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


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
