"""Celery tasks: thin doors. Each validates its input, runs its registry calls in units of work
(one per logical step), and maps the outcome in one place (`worker.outcomes`): done, retry later
(with backoff and jitter), or failed for good (recorded with its reason). Follow-up messages
are sent by the units of work after their commits (`registry.messages`)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import fields
from datetime import timedelta
from functools import lru_cache
from typing import Any

import openai
from celery import Task, signals
from sqlalchemy.exc import SQLAlchemyError

from registry import operations, stranded_operations, validation
from registry.canary import batches, outcome_input, outcomes
from registry.canary.resolver import resolver_for
from registry.db import one_statement, unit_of_work
from registry.errors import FtdeployError, InvalidInput, JobNotFinished, RunNotDeployable
from registry.jobs import events, pipeline, resumes
from registry.jobs.openai_jobs import fetch_job, fetch_result_metrics, make_client
from registry.models import OperationKind, OperationStatus
from registry.settings import get_settings
from worker import metrics, observability
from worker import outcomes as task_outcomes
from worker.app import app
from worker.logs import event
from worker.outcomes import TRANSIENT_ERRORS, Failure, Policy, retry_delay
from worker.sweep import run_sweep

log = logging.getLogger("ftdeploy.worker")

__all__ = ["TRANSIENT_ERRORS", "retry_delay"]


@lru_cache(maxsize=1)
def openai_client() -> openai.OpenAI:
    # The key and URL as the settings cleaned them (a file-mounted key loses its newline).
    settings = get_settings()
    return make_client(
        api_key=settings.openai_api_key_value,
        base_url=settings.openai_base_url,
        timeout=settings.openai_timeout_seconds,
    )


@signals.worker_init.connect
def _build_openai_client(**_: Any) -> None:
    # Before the pool forks (no connection is open yet, so none is shared): every pool process
    # inherits the client with the SDK's resource modules loaded and the CA store read, which
    # otherwise costs the first task of each process seconds of its time limit under load.
    try:
        client = openai_client()
    except openai.OpenAIError:
        return  # no key: the first task reports it
    resources = (client.fine_tuning.jobs, client.files)  # the SDK imports these on first use
    del resources


def _job_fields(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"job": args[0] if args else kwargs.get("job_id")}


def _job_released(failure: Failure) -> None:
    job_id = _job_fields(failure.args, failure.kwargs)["job"]
    try:
        with unit_of_work() as session:
            pipeline.release_job(session, job_id)
    except TRANSIENT_ERRORS:
        pass  # the mark is only a crash counter; the retry goes ahead without it


def _job_failed(failure: Failure) -> dict[str, Any]:
    job_id = _job_fields(failure.args, failure.kwargs)["job"]
    if not validation.is_openai_id(job_id):
        event(log, "job.refused", logging.WARNING, reason=failure.reason)
        return {"status": "refused", "reason": failure.reason}
    try:
        with unit_of_work() as session:
            pipeline.fail_job(session, job_id, failure.reason)
    except TRANSIENT_ERRORS:
        # The database is away as the retries ran out: the event stays open, and beat's
        # reconciler sends it again once the database is back. Say why, in one line.
        event(log, "job.unrecorded", logging.WARNING, job=job_id, reason=failure.reason)
        return {"status": "unrecorded", "reason": failure.reason}
    event(log, "job.failed", logging.WARNING, job=job_id, reason=failure.reason)
    return {"status": "failed", "reason": failure.reason}


JOB_EVENTS = Policy(failed=_job_failed, before_retry=_job_released, name="job", fields=_job_fields)


@app.task(name="ftdeploy.job_finished", bind=True, max_retries=None)
def job_finished(self: Task, job_id: Any, tenant: Any = None) -> dict[str, Any]:
    """A fine-tuning job finished: poll it, record the run, deploy it by the tenant's policy."""
    return task_outcomes.run(self, JOB_EVENTS, _handle_job, job_id, tenant)


def _handle_job(job_id: Any, tenant: Any) -> dict[str, Any]:
    task: Task = job_finished
    settings = get_settings()
    job_id = validation.job_id(job_id)
    tenant = validation.optional_tenant_ref(tenant)
    # Only a redelivered message can mean a crash; a duplicate of the event is none.
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    deadline = settings.job_deadline_seconds
    # Committed before the poll, so that a crash during it is counted: most events in one
    # statement without a transaction around it, the others claimed first in a unit of work.
    with one_statement() as session:
        attempt = pipeline.count_attempt(
            session, job_id, tenant, redelivered=redelivered, deadline_seconds=deadline
        )
    if attempt is None:
        with unit_of_work() as session:
            attempt = pipeline.begin_attempt(
                session, job_id, tenant, redelivered=redelivered, deadline_seconds=deadline
            )
    if attempt.stop is not None:
        raise attempt.stop  # the registry's verdict (poison event, deadline), committed above
    job = fetch_job(openai_client(), job_id)
    if not job.terminal:
        raise JobNotFinished(job_id, job.status)
    result_metrics = (
        fetch_result_metrics(openai_client(), job) if job.status == "succeeded" else None
    )
    with unit_of_work() as session:
        outcome = pipeline.complete_job(session, job, attempt.tenant, result_metrics)
    event(log, "job.handled", job=job_id, tenant=outcome.tenant, outcome=outcome.summary)
    return {"status": "done", "tenant": outcome.tenant, "outcome": outcome.summary}


def _evaluation_failed(failure: Failure) -> dict[str, Any]:
    status = "refused"
    if isinstance(failure.error, RunNotDeployable):
        # The job has not succeeded (yet): its job_finished event deploys it when it does.
        status = "waiting"
    run_id, evaluation_id = failure.args[0], failure.args[1]
    try:
        with unit_of_work() as session:
            # Ended with its reason, so that the reconciler does not send it again.
            pipeline.end_resume(session, run_id, evaluation_id, f"{status}: {failure.reason}")
    except SQLAlchemyError:
        # The database is away: the resume stays open, and the reconciler sends it again.
        event(log, "evaluation.unrecorded", logging.WARNING, reason=failure.reason)
        return {"status": "unrecorded", "reason": failure.reason}
    if status == "refused":
        event(log, "evaluation.refused", logging.WARNING, reason=failure.reason)
    return {"status": status, "reason": failure.reason}


EVALUATIONS = Policy(max_retries=10, failed=_evaluation_failed, name="evaluation")


@app.task(name="ftdeploy.evaluation_recorded", bind=True, max_retries=10)
def evaluation_recorded(self: Task, run_id: str, evaluation_id: Any = None) -> dict[str, Any]:
    """An evaluation was recorded: resume the run's deployment if it was waiting for one, and
    end the evaluation's resume (when the message names it) with what happened."""
    return task_outcomes.run(self, EVALUATIONS, _resume, run_id, evaluation_id)


def _resume(run_id: str, evaluation_id: Any) -> dict[str, Any]:
    with unit_of_work() as session:
        result = pipeline.resume_deployment(session, run_id, evaluation_id)
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
    return task_outcomes.run(
        self,
        OPERATIONS,
        _run_operation,
        OperationKind.PROMOTE,
        tenant,
        operation_id,
        version=version,
        traffic_percent=traffic_percent,
    )


@app.task(name="ftdeploy.rollback", bind=True, max_retries=10)
def rollback(self: Task, tenant: str, operation_id: str | None = None) -> dict[str, Any]:
    """Roll back the tenant's newest production version (queued operation or direct call)."""
    return task_outcomes.run(
        self, OPERATIONS, _run_operation, OperationKind.ROLLBACK, tenant, operation_id
    )


def _run_operation(
    kind: OperationKind, tenant: str, operation_id: str | None, **arguments: Any
) -> dict[str, Any]:
    with unit_of_work() as session:
        if operation_id is None:
            # A direct call by another system: queued and run at once, on the split of now.
            queued = operations.queue_operation(session, tenant, kind, actor="celery", **arguments)
            operation_id, asked = str(queued.id), None
        else:
            # The message must agree with the operation it names in every part.
            asked = operations.Asked(
                kind, tenant, arguments.get("version"), arguments.get("traffic_percent")
            )
        done = operations.run_operation(session, operation_id, asked=asked)
        result = {"operation": str(done.id), "status": done.status, "error": done.error}
    refused = (done.error or "").startswith("refused:")
    name = "operation.refused" if refused else "operation.finished"
    level = logging.INFO if done.status == OperationStatus.SUCCEEDED else logging.WARNING
    event(log, name, level, kind=str(kind), tenant=tenant, result=result)
    return result


def _operation_failed(failure: Failure) -> dict[str, Any]:
    kind, tenant, operation_id = failure.args[:3]
    status = "refused"
    if failure.internal or not isinstance(failure.error, FtdeployError) or failure.error.retryable:
        # A queued operation that cannot be run ends failed, with the reason, not queued forever.
        try:
            with unit_of_work() as session:
                if operations.fail_operation(session, operation_id, failure.reason):
                    status = "failed"
        except FtdeployError:
            pass  # no such operation: nothing to mark
        except SQLAlchemyError:
            # The database is still away: the row stays queued, and beat's reconciler sends it
            # again (or expires it) once the database is back.
            status = "unrecorded"
    event(
        log,
        f"operation.{status}",
        logging.WARNING,
        kind=str(kind),
        tenant=tenant,
        reason=failure.reason,
    )
    return {"operation": operation_id, "status": status, "error": failure.reason}


OPERATIONS = Policy(max_retries=10, failed=_operation_failed, name="operation")


@app.task(name="ftdeploy.reconcile_events")
def reconcile_events() -> int:
    """Re-send events that were accepted but never handed to the broker (a crash in between),
    and events whose message the broker lost (untouched for twice the visibility timeout); then
    the same for queued operations, after expiring those past their time to live, and for
    evaluations' resumes. One unit of work each: a failure of one leaves the others done."""
    settings = get_settings()
    grace = timedelta(seconds=settings.reconcile_grace_seconds)
    stalled_after = timedelta(seconds=2 * settings.visibility_timeout_seconds)
    total = 0
    for what, reconcile in (
        ("events", events.reconcile),
        ("operations", stranded_operations.reconcile),
        ("resumes", resumes.reconcile),
    ):
        with unit_of_work() as session:
            found = reconcile(session, grace=grace, stalled_after=stalled_after)
        # Each result is a dataclass of id lists (unsent, stalled, expired, ended, ...).
        counts = {field.name: len(getattr(found, field.name)) for field in fields(found)}
        if any(counts.values()):
            event(log, f"{what}.reconciled", **counts)
        total += sum(counts.values())
    return total


@app.task(name="ftdeploy.record_outcomes", bind=True, max_retries=10)
def record_outcomes(self: Task, batch: Any, batch_id: Any = None) -> dict[str, Any]:
    """Online outcomes from another process: each record is a mapping with tenant, model (model
    id or version), success, and optional score, latency_ms, count, at. Stored in one unit of
    work; refused records are returned with their reason and counted, the rest are kept.

    Counted once: the batch is claimed under `batch_id` (default: this message's task id, which a
    redelivery keeps) in the same transaction, so a batch redelivered after its commit (a worker
    killed before the ack) or sent twice with the same id adds nothing the second time."""
    return task_outcomes.run(self, OUTCOMES, _store_outcomes, batch, batch_id, self.request.id)


def _store_outcomes(batch: Any, batch_id: Any, task_id: str | None) -> dict[str, Any]:
    try:
        records = outcome_input.check_batch(batch)
        if batch_id is None:
            # A direct call (not a message) has no task id: nothing to deduplicate against.
            batch_id = f"task:{task_id or uuid.uuid4()}"
        batch_id = batches.check_batch_id(batch_id)
    except InvalidInput as error:
        result = batches.BatchResult(
            str(batch_id), refused=[outcome_input.Refusal(-1, "batch", str(error))]
        )
    else:
        settings = get_settings()
        with unit_of_work() as session:
            result = batches.store_batch(
                session,
                batch_id,
                records,
                bucket_seconds=settings.outcome_bucket_seconds,
                resolver=resolver_for(settings.database_url_value),
            )
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


OUTCOMES = Policy(max_retries=10, name="outcomes")


@app.task(name="ftdeploy.auto_promote_sweep")
def auto_promote_sweep() -> dict[str, Any]:
    """Beat's sweep over every live canary: hold, step, promote or roll back each, then retention
    (`worker.sweep.run_sweep`: one unit of work per action and per tenant, each isolated). Safe
    to overlap with itself; a failed sweep is simply the next one's."""
    report = run_sweep()
    metrics.sweep_report(report)
    observability.log_sweep(report)
    return report.as_dict()
