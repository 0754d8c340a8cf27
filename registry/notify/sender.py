"""One HTTP attempt: POST, short timeouts, no redirects followed; the outcome as plain data.

Errors are described by their class and a short text without the URL (it may carry a token).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx2 as httpx

from registry import clock

MAX_RETRY_AFTER_SECONDS = 86400.0


@dataclass(frozen=True)
class Sent:
    status_code: int | None  # None: no answer (timeout, refused, reset)
    error: str | None
    retry_after: float | None  # seconds, from a Retry-After header
    duration_ms: float


def make_client() -> httpx.Client:
    return httpx.Client(follow_redirects=False, trust_env=False)


def post(
    client: httpx.Client, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> Sent:
    started = time.perf_counter()
    try:
        response = client.post(url, content=body, headers=headers, timeout=httpx.Timeout(timeout))
    except httpx.TimeoutException as error:
        return Sent(None, f"timeout ({type(error).__name__})", None, _ms(started))
    except httpx.HTTPError as error:
        return Sent(None, f"{type(error).__name__}: {_scrub(str(error), url)}", None, _ms(started))
    return Sent(
        response.status_code,
        None if response.is_success else f"HTTP {response.status_code}",
        retry_after(response.headers.get("retry-after")),
        _ms(started),
    )


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), bounded; else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - clock.now()).total_seconds()
        except (TypeError, ValueError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _scrub(text: str, url: str) -> str:
    return text.replace(url, "<url>")[:300]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
