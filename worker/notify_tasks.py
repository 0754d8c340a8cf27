"""Delivering notifications: the `ftdeploy.deliver_notifications` task and its reconciler.

Isolation (a slow or dead endpoint delays nothing else): the task runs on its own queue,
`notifications` (every worker consumes it besides `ftdeploy`; run a worker with `-Q
notifications` to give deliveries processes of their own), one task per endpoint, and an
endpoint's loop holds a lease so it occupies at most one pool process at a time. Requests have
a short timeout (FTDEPLOY_NOTIFY_TIMEOUT_SECONDS, capped at a quarter of the task time limit),
and the first failure ends the endpoint's loop: its retry waits on the schedule, in no process.

Without an endpoint id the task is beat's reconciler: it fans out one task per endpoint that
has a delivery due (never sent after a crash, a retry whose time came, a loop that died).
"""

from __future__ import annotations

import logging
import time
import uuid
from functools import lru_cache
from typing import Any

import httpx2 as httpx
from sqlalchemy.exc import InterfaceError, OperationalError

from registry import clock
from registry.db import unit_of_work
from registry.errors import FtdeployError
from registry.notify import delivery, render, sender
from registry.settings import Settings, get_settings
from worker import notify_metrics
from worker.app import NOTIFY_QUEUE, app
from worker.logs import event

log = logging.getLogger("ftdeploy.notify")

TRANSIENT_DATABASE_ERRORS = (OperationalError, InterfaceError)
# A retry this soon is scheduled as a countdown; later ones are left to beat's reconciler
# (a countdown must stay well inside the broker's visibility timeout).
COUNTDOWN_LIMIT_SECONDS = 60.0


@lru_cache(maxsize=1)
def http_client() -> httpx.Client:
    return sender.make_client()


def policy(settings: Settings) -> delivery.RetryPolicy:
    return delivery.RetryPolicy(
        schedule=settings.notify_retry_schedule,
        disable_after_seconds=settings.notify_disable_after_seconds,
    )


def request_timeout(settings: Settings) -> float:
    return min(settings.notify_timeout_seconds, settings.task_time_limit_seconds / 4)


@app.task(name="ftdeploy.deliver_notifications", max_retries=None, queue=NOTIFY_QUEUE)
def deliver_notifications(endpoint_id: Any = None) -> dict[str, Any]:
    """Deliver what is due for one endpoint, in order; without one, fan out to every endpoint
    with something due. Idempotent and safe to overlap: the endpoint's lease admits one loop."""
    try:
        if endpoint_id is None:
            return {"fanned_out": fan_out()}
        try:
            key = uuid.UUID(str(endpoint_id))
        except ValueError:
            return {"status": "refused", "reason": f"{endpoint_id!r} is not an endpoint id"}
        return deliver_endpoint(key)
    except TRANSIENT_DATABASE_ERRORS as error:
        # The database is away: the reconciler's next round retries; nothing is lost.
        event(log, "notify.database_unavailable", logging.WARNING, error=type(error).__name__)
        return {"status": "database unavailable"}


def fan_out() -> int:
    with unit_of_work() as session:
        due = delivery.due_endpoints(session, clock.now())
    send_deliveries(due)
    return len(due)


def deliver_endpoint(endpoint_id: uuid.UUID) -> dict[str, Any]:
    settings = get_settings()
    timeout = request_timeout(settings)
    lease = 2 * timeout + 5
    # Leave room within the soft time limit for one more request and its recording.
    budget = max(1.0, settings.task_time_limit_seconds * 0.6 - timeout)
    started = time.monotonic()
    counts: dict[str, int] = {}
    stopped = False
    while not stopped:
        with unit_of_work() as session:
            if not delivery.claim(session, endpoint_id, clock.now(), lease):
                counts["busy"] = 1
                break
        try:
            stopped = _drain(endpoint_id, settings, timeout, lease, started, budget, counts)
        finally:
            with unit_of_work() as session:
                delivery.release(session, endpoint_id)
        if stopped:
            break
        if time.monotonic() - started > budget:
            send_deliveries([endpoint_id])  # more is due: a fresh task, not a longer one
            break
        # A delivery committed while we held the lease found it taken: look once more.
        with unit_of_work() as session:
            if not delivery.has_due(session, endpoint_id, clock.now()):
                break
    _schedule_next(endpoint_id)
    return counts


def _drain(
    endpoint_id: uuid.UUID,
    settings: Settings,
    timeout: float,
    lease: float,
    started: float,
    budget: float,
    counts: dict[str, int],
) -> bool:
    """Send due deliveries until none is due or time is up; True when a failure stopped it."""
    while time.monotonic() - started <= budget:
        try:
            with unit_of_work() as session:
                outgoing = delivery.next_due(session, endpoint_id, clock.now(), lease)
        except FtdeployError as error:  # the stored secret does not decrypt: say so, stop
            event(
                log,
                "notify.endpoint_unusable",
                logging.ERROR,
                endpoint=str(endpoint_id),
                reason=str(error),
            )
            return True
        if outgoing is None:
            return False
        now = clock.now()
        request = render.request_for(
            outgoing.format, outgoing.message, outgoing.secret, now, settings.public_url
        )
        sent = sender.post(http_client(), outgoing.url, request.body, request.headers, timeout)
        with unit_of_work() as session:
            recorded = delivery.record_attempt(
                session, outgoing.delivery_id, sent, clock.now(), policy(settings)
            )
        counts[recorded.outcome.value] = counts.get(recorded.outcome.value, 0) + 1
        notify_metrics.delivery(recorded.outcome.value)
        event(
            log,
            f"notify.{recorded.outcome.value}",
            logging.INFO if recorded.outcome is delivery.Outcome.DELIVERED else logging.WARNING,
            endpoint=outgoing.endpoint,
            webhook_id=outgoing.message.id,
            type=outgoing.message.type,
            attempt=outgoing.attempts + 1,
            status_code=sent.status_code,
            error=sent.error,
            next_attempt_at=recorded.next_attempt_at.isoformat()
            if recorded.next_attempt_at
            else None,
        )
        if recorded.disabled is not None:
            notify_metrics.endpoint_disabled(
                "gone" if recorded.outcome is delivery.Outcome.GONE else "failing"
            )
            event(
                log,
                "notify.endpoint_disabled",
                logging.ERROR,
                endpoint=outgoing.endpoint,
                reason=recorded.disabled,
            )
            return True
        if recorded.outcome is delivery.Outcome.RETRY:
            return True  # the endpoint is failing: the rest waits for the schedule
    return False


def _schedule_next(endpoint_id: uuid.UUID) -> None:
    with unit_of_work() as session:
        wakeup = delivery.next_wakeup(session, endpoint_id)
    if wakeup is None:
        return
    delay = (wakeup - clock.now()).total_seconds()
    if 0 < delay <= COUNTDOWN_LIMIT_SECONDS:
        try:
            deliver_notifications.apply_async(
                kwargs={"endpoint_id": str(endpoint_id)}, countdown=delay
            )
        except Exception as error:  # the reconciler finds it anyway
            event(log, "notify.schedule_failed", logging.WARNING, error=type(error).__name__)


def send_deliveries(endpoint_ids: Any) -> None:
    """Ask the worker to deliver to these endpoints, from the reconciler and from an endpoint's
    loop with more due (a commit that wrote deliveries sends its own after the commit:
    `registry.notify.outbox.send_pending`). A send that fails is logged, not raised: beat's
    reconciler delivers what was never sent."""
    for endpoint_id in endpoint_ids:
        try:
            deliver_notifications.apply_async(kwargs={"endpoint_id": str(endpoint_id)})
        except Exception as error:
            event(
                log,
                "notify.send_failed",
                logging.WARNING,
                endpoint=str(endpoint_id),
                error=type(error).__name__,
            )
