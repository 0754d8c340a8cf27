"""Structured logs: an event name and fields, as `key=value` text or one JSON object per line.

Secrets never reach a log: fields are ids, counts and reasons, and reasons come from our own error
messages, which are built without them.
"""

from __future__ import annotations

import json
import logging
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


def configure(as_json: bool = False, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(EventFormatter(as_json))
    root = logging.getLogger("ftdeploy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
