"""The rules every input from outside is checked against, each written once.

A door (CLI, task, webhook, outcome batch) and the registry functions it calls use these, so a
value the CLI accepts is one the worker accepts. Each check returns the value in its canonical
form or raises `InvalidInput` naming the field; none touches the database.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TypeVar

from registry.errors import InvalidInput

MAX_OPENAI_ID_LENGTH = 200  # the columns that hold job ids are String(200)
SLUG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_OPENAI_ID = re.compile(r"[A-Za-z0-9_:.-]+")
_E = TypeVar("_E", bound=StrEnum)


def is_openai_id(text: object) -> bool:
    """Shaped like an OpenAI object id (job, file): 1..200 of letters, digits, `_:.-`, not all
    dots (`.` and `..` would become path segments of the request, which the SDK refuses)."""
    return (
        isinstance(text, str)
        and 0 < len(text) <= MAX_OPENAI_ID_LENGTH
        and _OPENAI_ID.fullmatch(text) is not None
        and bool(text.strip("."))
    )


def job_id(value: object) -> str:
    """An OpenAI fine-tuning job id. Checked before any call, so a bad event fails clearly and
    never reaches the network."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("job_id", "must be a non-empty string")
    if len(value) > MAX_OPENAI_ID_LENGTH:
        raise InvalidInput("job_id", f"longer than {MAX_OPENAI_ID_LENGTH} characters")
    if not is_openai_id(value):
        raise InvalidInput("job_id", f"{value[:60]!r} is not an OpenAI job id")
    return value


def tenant_slug(value: object) -> str:
    """A tenant's slug: 1..63 lowercase letters, digits or '-', starting with a letter or digit."""
    if not isinstance(value, str) or not SLUG_PATTERN.match(value):
        raise InvalidInput(
            "tenant slug", f"{value!r} must be 1-63 lowercase letters, digits or '-'"
        )
    return value


def as_uuid(value: object) -> uuid.UUID | None:
    """`value` as a UUID when it is one (a UUID or its text), else None."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def uuid_id(value: object, field: str) -> uuid.UUID:
    """An id that must be a UUID (an operation id, a run id from a message)."""
    parsed = as_uuid(value)
    if parsed is None:
        raise InvalidInput(field, f"{value!r} is not an id")
    return parsed


def tenant_ref(value: object, field: str = "tenant") -> str:
    """A tenant named by slug or by id, as text (a UUID object is given as its text)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str) or not (SLUG_PATTERN.match(value) or as_uuid(value)):
        raise InvalidInput(field, f"{value!r} is not a tenant slug or id")
    return value


def optional_tenant_ref(value: object) -> str | None:
    """A tenant that may be absent (an event's hint): None or "" mean none given; an id passes,
    anything else must be a valid slug."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput("tenant", f"{value!r} is not a slug or id")
    if as_uuid(value) is not None:
        return value
    return tenant_slug(value)


def whole_number(field: str, value: object, low: int, high: int | None = None) -> int:
    """An int (not a bool, not 12.5) in low..high (no upper bound when `high` is None)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, f"{value!r} is not a whole number")
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise InvalidInput(field, f"{value} is outside {bounds}")
    return value


def traffic_percent(value: object) -> int:
    """A traffic percent an operator asks for: a whole number in 1..100."""
    return whole_number("traffic percent", value, 1, 100)


def canary_percent(value: object) -> int:
    """A canary's share: 1..99 (100 is a promotion, 0 no canary)."""
    return whole_number("canary percent", value, 1, 99)


def version_number(value: object) -> int:
    """A version as people write it: 3, "3" or "v3"."""
    version = value
    if isinstance(version, str) and version.lower().startswith("v"):
        version = version[1:]
    try:
        number = int(version)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise InvalidInput("version", f"{version!r} is not a version number") from None
    if isinstance(version, bool) or number < 1 or str(number) != str(version).strip():
        raise InvalidInput("version", f"{version!r} is not a version number (1, 2, … or v1)")
    return number


def one_of(field: str, value: object, enum: type[_E]) -> _E:
    """A member of `enum`, given as its value."""
    if isinstance(value, str) and value in set(enum):
        return enum(value)
    allowed = ", ".join(member.value for member in enum)
    raise InvalidInput(field, f"{value!r} is not one of {allowed}")


MAX_REASON = 500


def reason(value: object) -> str | None:
    """An operator's reason (a pause, a policy change): at most 500 characters, no NUL; blank
    means none given."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_REASON:
        raise InvalidInput("reason", f"must be text of at most {MAX_REASON} characters")
    if "\x00" in value:
        raise InvalidInput("reason", "contains a NUL character")
    return value.strip() or None


def actor(value: object) -> str:
    """Who asks (kept in the audit trail): 1..200 printable characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InvalidInput("actor", "must be text of 1 to 200 characters")
    if not value.isprintable():
        raise InvalidInput("actor", "contains a control character")
    return value.strip()


_DURATION = re.compile(r"^(\d{1,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since(value: object, now: datetime) -> datetime:
    """A point in time from the past: an ISO 8601 timestamp (UTC when it names no zone) or a
    duration back from `now` (`30m`, `2h`, `1d`)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("since", "expected a duration (30m, 2h, 1d) or an ISO 8601 time")
    text = value.strip()
    match = _DURATION.match(text)
    if match:
        return now - timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            "since", f"{text!r} is neither a duration (30m, 2h, 1d) nor an ISO 8601 time"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
