"""How every task's outcome is decided, in one place: done, retry later, or failed for good.

Like sentry's `retry(on=…, exclude=…)`: a task body runs through `run(task, policy, body, …)`.
- It returns: done (the body's result).
- It raises a transient error (`policy.on`: database disconnects, the soft time limit, and any
  `FtdeployError` whose `retryable` is set: OpenAI 429/5xx/timeouts, a job still running) and
  is not excluded (`policy.exclude`): retried with growing, jittered backoff that honours
  Retry-After (`retry_delay`), up to `policy.max_retries` (None: `FTDEPLOY_MAX_RETRIES`); then
  failed for good, "gave up after N attempts: …".
- It raises a domain error (any other `FtdeployError`: unknown tenant, bad input, rejected
  evaluation): failed for good at once.
Failed for good means `policy.failed(failure)` records the reason where operators look (the
event, the operation) and returns the task's result. Anything else is a bug: recorded as
"internal error: …" the same way, then re-raised so that Celery logs it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError

from registry.errors import FtdeployError, JobNotFinished
from registry.settings import Settings, get_settings
from worker import metrics
from worker.logs import event

log = logging.getLogger("ftdeploy.worker")

# Database disconnects (a restart, a terminated backend) pass: retry the whole unit of work. An
# attempt that outran its soft time limit (a slow reply, a lock wait) is transient too.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    SoftTimeLimitExceeded,
)


@dataclass(frozen=True)
class Failure:
    """A task that failed for good: what it was called with, and why."""

    task: Task
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    error: BaseException
    reason: str
    internal: bool = False  # a bug, not an expected failure


def _log_failure(failure: Failure) -> dict[str, Any]:
    event(log, "task.failed", logging.WARNING, task=failure.task.name, reason=failure.reason)
    return {"status": "failed", "reason": failure.reason}


def _no_fields(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Policy:
    """One task's mapping of errors to outcomes (see the module docstring)."""

    on: tuple[type[BaseException], ...] = TRANSIENT_ERRORS
    exclude: tuple[type[BaseException], ...] = ()
    max_retries: int | None = None
    # Records the failure for good and returns the task's result.
    failed: Callable[[Failure], dict[str, Any]] = _log_failure
    # Runs before a retry is scheduled (say, clear the attempt's in-flight mark).
    before_retry: Callable[[Failure], None] | None = None
    # Log events are named `<name>.retry`, with `fields(args, kwargs)` (the task's ids).
    name: str = "task"
    fields: Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any]] = _no_fields


def retry_delay(error: BaseException, retries: int, settings: Settings) -> float:
    """Seconds before the next attempt: growing, jittered, honouring Retry-After, and never past
    `job_poll_max_seconds` (which the settings keep below the broker's visibility timeout)."""
    if isinstance(error, JobNotFinished):
        base = settings.job_poll_seconds * 1.5**retries
    else:
        base = min(2.0**retries, 60.0) * min(1.0, settings.job_poll_seconds)
    delay = min(base, settings.job_poll_max_seconds) * random.uniform(0.8, 1.2)
    retry_after = getattr(error, "retry_after", None)
    if retry_after:
        delay = max(delay, float(retry_after))
    return min(delay, settings.job_poll_max_seconds)


def is_transient(error: BaseException, policy: Policy) -> bool:
    if isinstance(error, policy.exclude):
        return False
    if isinstance(error, FtdeployError):
        return error.retryable
    # SQLAlchemy wraps an interruption fired inside a statement (the soft time limit).
    return isinstance(error, policy.on) or isinstance(getattr(error, "orig", None), policy.on)


def run(
    task: Task, policy: Policy, body: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
) -> dict[str, Any]:
    """Run `body(*args, **kwargs)` for `task` and map its outcome by `policy`."""
    try:
        return body(*args, **kwargs)
    except Exception as error:
        expected = isinstance(error, FtdeployError) or is_transient(error, policy)
        if not expected:
            reason = f"internal error: {type(error).__name__}: {error}"
            policy.failed(Failure(task, args, kwargs, error, reason, internal=True))
            raise
        return _retry_or_fail(task, policy, error, args, kwargs)


def _retry_or_fail(
    task: Task,
    policy: Policy,
    error: Exception,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    metrics.openai_error(error)
    settings = get_settings()
    retries = task.request.retries
    limit = settings.max_retries if policy.max_retries is None else policy.max_retries
    reason = str(error)
    if not is_transient(error, policy):
        return policy.failed(Failure(task, args, kwargs, error, reason))
    if retries < limit:
        delay = retry_delay(error, retries, settings)
        if policy.before_retry is not None:
            policy.before_retry(Failure(task, args, kwargs, error, reason))
        event(
            log,
            f"{policy.name}.retry",
            **policy.fields(args, kwargs),
            reason=reason,
            in_seconds=round(delay, 2),
        )
        try:
            raise task.retry(countdown=delay, exc=error) from error
        except Reject as lost:
            # Celery drops the message when the retry cannot be published (the broker gone, the
            # soft time limit firing mid-publish), which would leave the work undone forever.
            raise Reject(lost.reason, requeue=True) from error
    reason = f"gave up after {retries + 1} attempts: {reason}"
    return policy.failed(Failure(task, args, kwargs, error, reason))
