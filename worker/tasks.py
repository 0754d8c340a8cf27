"""Celery tasks: thin doors. Each validates its input, runs one registry call in a unit of work,
and maps the outcome: done, retry later (with backoff and jitter), or failed for good (recorded)."""

from __future__ import annotations

import logging
import random
import uuid
from datetime import timedelta
from functools import lru_cache
from typing import Any

import openai
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError

from registry import clock, operations, validation
from registry.canary import batches, outcomes, sweep
from registry.db import session_factory, unit_of_work
from registry.deployments import deploy
from registry.errors import (
    FtdeployError,
    InvalidInput,
    JobDeadlineExceeded,
    JobNotFinished,
    RunNotDeployable,
)
from registry.jobs import events, pipeline
from registry.jobs.openai_jobs import fetch_job, fetch_result_metrics, make_client
from registry.models import FinetuningRun, OperationKind
from registry.settings import Settings, get_settings
from worker import metrics, observability
from worker.app import app
from worker.logs import event

log = logging.getLogger("ftdeploy.worker")

# A process that dies this many times while handling one event makes it a poison event.
MAX_CRASHES = 3
# Database disconnects (a restart, a terminated backend) pass: retry the whole unit of work.
TRANSIENT_DATABASE_ERRORS = (OperationalError, InterfaceError)


@lru_cache(maxsize=1)
def openai_client() -> openai.OpenAI:
    # The key and URL as the settings cleaned them (a file-mounted key loses its newline).
    settings = get_settings()
    return make_client(
        api_key=settings.openai_api_key_value,
        base_url=settings.openai_base_url,
        timeout=settings.openai_timeout_seconds,
    )


def retry_delay(error: Exception, retries: int, settings: Settings) -> float:
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


@app.task(name="ftdeploy.job_finished", bind=True, max_retries=None)
def job_finished(self: Task, job_id: Any, tenant: Any = None) -> dict[str, Any]:
    """A fine-tuning job finished: poll it, record the run, deploy it by the tenant's policy."""
    settings = get_settings()
    try:
        job_id = validation.job_id(job_id)
        tenant = validation.optional_tenant_ref(tenant)
        # Only a redelivered message can mean a crash; a duplicate of the event is none.
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        with unit_of_work() as session:
            attempt = events.start_attempt(session, job_id, tenant, redelivered=redelivered)
            received_at, crashes = attempt.received_at, attempt.crashes
            # A message re-sent by the reconciler carries no tenant: the accepted event has it.
            tenant = tenant or attempt.tenant_hint
        if crashes >= MAX_CRASHES:
            return _fail(job_id, f"the worker died {crashes} times while handling this event")
        waited = (clock.now() - received_at).total_seconds()
        if waited > settings.job_deadline_seconds:
            raise JobDeadlineExceeded(job_id, settings.job_deadline_seconds)
        job = fetch_job(openai_client(), job_id)
        if not job.terminal:
            raise JobNotFinished(job_id, job.status)
        metrics = fetch_result_metrics(openai_client(), job) if job.status == "succeeded" else None
        with unit_of_work() as session:
            outcome = pipeline.complete_job(session, job, tenant, metrics)
    except (FtdeployError, SoftTimeLimitExceeded, *TRANSIENT_DATABASE_ERRORS) as error:
        # An attempt that outran its soft time limit (a slow reply, a lock wait) is transient.
        return _retry_or_fail(self, job_id, error, settings)
    except Exception as error:
        if isinstance(getattr(error, "orig", None), SoftTimeLimitExceeded):
            # The same interruption, fired inside a statement (SQLAlchemy wraps it).
            return _retry_or_fail(self, job_id, error, settings)
        # A bug must not leave the event open and silent: record it, then let Celery log it.
        _fail(job_id, f"internal error: {type(error).__name__}: {error}")
        raise
    event(log, "job.handled", job=job_id, tenant=outcome.tenant, outcome=outcome.summary)
    return {"status": "done", "tenant": outcome.tenant, "outcome": outcome.summary}


def _retry_or_fail(task: Task, job_id: Any, error: Exception, settings: Settings) -> dict[str, Any]:
    metrics.openai_error(error)
    retryable = not isinstance(error, FtdeployError) or error.retryable
    if not validation.is_openai_id(job_id):
        event(log, "job.refused", logging.WARNING, reason=str(error))
        return {"status": "refused", "reason": str(error)}
    if retryable and task.request.retries < settings.max_retries:
        delay = retry_delay(error, task.request.retries, settings)
        _release(job_id)
        event(log, "job.retry", job=job_id, reason=str(error), in_seconds=round(delay, 2))
        try:
            raise task.retry(countdown=delay, exc=error) from error
        except Reject as lost:
            # Celery drops the message when the retry cannot be published (the broker gone, the
            # soft time limit firing mid-publish), which would leave the event open forever.
            raise Reject(lost.reason, requeue=True) from error
    reason = str(error)
    if retryable:
        reason = f"gave up after {task.request.retries + 1} attempts: {reason}"
    return _fail(job_id, reason)


def _release(job_id: str) -> None:
    try:
        with unit_of_work() as session:
            pipeline.release_job(session, job_id)
    except TRANSIENT_DATABASE_ERRORS:
        pass  # the mark is only a crash counter; the retry goes ahead without it


def _fail(job_id: str, reason: str) -> dict[str, Any]:
    with unit_of_work() as session:
        pipeline.fail_job(session, job_id, reason)
    event(log, "job.failed", logging.WARNING, job=job_id, reason=reason)
    return {"status": "failed", "reason": reason}


@app.task(name="ftdeploy.evaluation_recorded", bind=True, max_retries=10)
def evaluation_recorded(self: Task, run_id: str) -> dict[str, Any]:
    """An evaluation was recorded: resume the run's deployment if it was waiting for one."""
    try:
        with unit_of_work() as session:
            run = session.get(FinetuningRun, validation.as_uuid(run_id))
            if run is None:
                return {"status": "refused", "reason": f"no run {run_id}"}
            result = deploy(session, run.tenant_id, run.id)
    except RunNotDeployable as error:
        # The job has not succeeded (yet): its job_finished event deploys it when it does.
        return {"status": "waiting", "reason": str(error)}
    except TRANSIENT_DATABASE_ERRORS as error:
        raise self.retry(
            countdown=retry_delay(error, self.request.retries, get_settings()), exc=error
        ) from error
    event(log, "evaluation.resumed", run=run_id, status=result.status, version=result.version)
    return {"status": str(result.status), "version": result.version}


@app.task(name="ftdeploy.promote", bind=True, max_retries=10)
def promote(
    self: Task,
    tenant: str,
    version: Any,
    traffic_percent: Any = 100,
    operation_id: str | None = None,
) -> dict[str, Any]:
    """Promote a version (an operator's queued operation, or a direct call by another system)."""
    return _run_operation(
        self,
        OperationKind.PROMOTE,
        tenant,
        operation_id,
        version=version,
        traffic_percent=traffic_percent,
    )


@app.task(name="ftdeploy.rollback", bind=True, max_retries=10)
def rollback(self: Task, tenant: str, operation_id: str | None = None) -> dict[str, Any]:
    """Roll back the tenant's newest production version (queued operation or direct call)."""
    return _run_operation(self, OperationKind.ROLLBACK, tenant, operation_id)


def _run_operation(
    task: Task, kind: OperationKind, tenant: str, operation_id: str | None, **arguments: Any
) -> dict[str, Any]:
    try:
        with unit_of_work() as session:
            if operation_id is None:
                operation_id = str(
                    operations.queue_operation(
                        session, tenant, kind, actor="celery", **arguments
                    ).id
                )
            done = operations.run_operation(session, operation_id)
            result = {"operation": str(done.id), "status": done.status, "error": done.error}
    except TRANSIENT_DATABASE_ERRORS as error:
        raise task.retry(
            countdown=retry_delay(error, task.request.retries, get_settings()), exc=error
        ) from error
    except FtdeployError as error:
        event(
            log, "operation.refused", logging.WARNING, kind=kind, tenant=tenant, reason=str(error)
        )
        return {"operation": operation_id, "status": "refused", "error": str(error)}
    event(log, "operation.finished", kind=str(kind), tenant=tenant, result=result)
    return result


@app.task(name="ftdeploy.reconcile_events")
def reconcile_events() -> int:
    """Re-send events that were accepted but never handed to the broker (a crash in between),
    and events whose message the broker lost (untouched for twice the visibility timeout)."""
    settings = get_settings()
    with unit_of_work() as session:
        grace = timedelta(seconds=settings.reconcile_grace_seconds)
        stranded = events.unenqueued_events(session, older_than=grace)
        stalled_after = timedelta(seconds=2 * settings.visibility_timeout_seconds)
        stalled = events.stalled_events(session, older_than=stalled_after)
    for job_id in stranded:
        send_job_finished(job_id)
    for job_id in stalled:
        job_finished.apply_async(args=(job_id,))
    if stranded or stalled:
        event(log, "events.reconciled", unsent=len(stranded), stalled=len(stalled))
    return len(stranded) + len(stalled)


@app.task(name="ftdeploy.record_outcomes", bind=True, max_retries=10)
def record_outcomes(self: Task, batch: Any, batch_id: Any = None) -> dict[str, Any]:
    """Online outcomes from another process: each record is a mapping with tenant, model (model
    id or version), success, and optional score, latency_ms, count, at. Stored in one unit of
    work; refused records are returned with their reason and counted, the rest are kept.

    Counted once: the batch is claimed under `batch_id` (default: this message's task id, which a
    redelivery keeps) in the same transaction, so a batch redelivered after its commit (a worker
    killed before the ack) or sent twice with the same id adds nothing the second time."""
    try:
        records = outcomes.check_batch(batch)
        if batch_id is None:
            # A direct call (not a message) has no task id: nothing to deduplicate against.
            batch_id = f"task:{self.request.id or uuid.uuid4()}"
        batch_id = batches.check_batch_id(batch_id)
    except InvalidInput as error:
        result = batches.BatchResult(
            str(batch_id), refused=[outcomes.Refusal(-1, "batch", str(error))]
        )
    else:
        settings = get_settings()
        try:
            with unit_of_work() as session:
                result = batches.store_batch(
                    session,
                    batch_id,
                    records,
                    bucket_seconds=settings.outcome_bucket_seconds,
                    resolver=_outcome_resolver(settings.database_url_value),
                )
        except TRANSIENT_DATABASE_ERRORS as error:
            raise self.retry(
                countdown=retry_delay(error, self.request.retries, settings), exc=error
            ) from error
    if not result.duplicate:
        metrics.outcomes_stored(outcomes.StoreResult(result.recorded, result.refused))
    if result.refused:
        first = result.refused[0].reason
        event(log, "outcomes.refused", logging.WARNING, count=len(result.refused), first=first)
    return {
        "batch_id": result.batch_id,
        "duplicate": result.duplicate,
        "recorded": result.recorded,
        "refused": [vars(r) for r in result.refused],
    }


@lru_cache(maxsize=4)
def _outcome_resolver(database_url: str) -> outcomes.VersionResolver:
    # Per database: the cached ids mean nothing in another one.
    return outcomes.VersionResolver()


@app.task(name="ftdeploy.auto_promote_sweep")
def auto_promote_sweep() -> dict[str, Any]:
    """Beat's sweep over every live canary: hold, step, promote or roll back each (see
    `registry.canary.sweep`). Safe to overlap with itself; a failed sweep is simply the next
    one's."""
    report = sweep.auto_promote_sweep(session_factory())
    metrics.sweep_report(report)
    observability.log_sweep(report)
    return report.as_dict()


def send_job_finished(job_id: str, tenant: str | None = None) -> None:
    """Hand an accepted event to the broker, then note that it was (after the send: a crash in
    between leaves it for the reconciler, and the task is idempotent)."""
    job_finished.apply_async(args=(job_id,), kwargs={"tenant": tenant})
    with unit_of_work() as session:
        events.mark_enqueued(session, job_id)
