"""From a finished fine-tuning job to serving traffic: the event's domain steps.

The worker's task runs three units of work around one OpenAI poll:
1. `begin_attempt`: count the attempt and decide by the event's policy whether to go on (a poison
   event that crashed the worker `MAX_CRASHES` times, or a job past its deadline, is given up);
   committed before the poll, so that a crash during it is counted.
2. the poll, outside any transaction (`registry.jobs.openai_jobs`);
3. `complete_job`: resolve the tenant, record the run, deploy through the evaluation gate.
Failures for good end the event with their reason (`fail_job`); a retry clears the attempt's
in-flight mark (`release_job`). `resume_deployment` continues a run waiting for its evaluation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from registry import clock, validation
from registry.deployments import DeployResult, deploy, deploy_run
from registry.errors import (
    FtdeployError,
    InvalidInput,
    JobDeadlineExceeded,
    PoisonEvent,
    RunNotFound,
)
from registry.jobs import events, resumes
from registry.jobs.events import end_attempt, finish_event, start_attempt
from registry.jobs.openai_jobs import JobSnapshot
from registry.jobs.runs import lock_and_write_run
from registry.models import Evaluation, EventState, FinetuningRun
from registry.notify import notices

# A process that dies this many times while handling one event makes it a poison event.
MAX_CRASHES = 3


@dataclass(frozen=True)
class Attempt:
    """One attempt at an event: the tenant it names, and why to stop now (None: go on)."""

    tenant: str | None
    stop: FtdeployError | None


def begin_attempt(
    session: Session,
    job_id: str,
    tenant_hint: str | None,
    *,
    redelivered: bool,
    deadline_seconds: float,
    now: datetime | None = None,
) -> Attempt:
    """Count one more attempt at the event (creating it if it came straight from the broker) and
    apply the event's policy: `stop` is PoisonEvent once the worker died `MAX_CRASHES` times
    handling it, JobDeadlineExceeded once it waited longer than `deadline_seconds`. Both are
    failures for good (the caller ends the event with `fail_job`). Only flushes: commit before
    polling OpenAI, so that a crash meanwhile is counted."""
    event = start_attempt(session, job_id, tenant_hint, redelivered=redelivered)
    return _decide(job_id, tenant_hint, event, deadline_seconds, now)


def count_attempt(
    session: Session,
    job_id: str,
    tenant_hint: str | None,
    *,
    redelivered: bool,
    deadline_seconds: float,
    now: datetime | None = None,
) -> Attempt | None:
    """`begin_attempt` in one statement when the event allows (`events.count_attempt`): for a
    session without a transaction (`registry.db.one_statement`). None when the event must be
    claimed first, and then nothing was written: call `begin_attempt` in a unit of work."""
    event = events.count_attempt(session, job_id, tenant_hint, redelivered=redelivered)
    if event is None:
        return None
    return _decide(job_id, tenant_hint, event, deadline_seconds, now)


def _decide(
    job_id: str,
    tenant_hint: str | None,
    event: events.AttemptCount,
    deadline_seconds: float,
    now: datetime | None,
) -> Attempt:
    # A message re-sent by the reconciler carries no tenant: the accepted event has it.
    tenant = tenant_hint or event.tenant_hint
    stop: FtdeployError | None = None
    if event.crashes >= MAX_CRASHES:
        stop = PoisonEvent(job_id, event.crashes)
    elif ((now or clock.now()) - event.received_at).total_seconds() > deadline_seconds:
        stop = JobDeadlineExceeded(job_id, deadline_seconds)
    return Attempt(tenant, stop)


@dataclass(frozen=True)
class JobOutcome:
    tenant: str
    job_status: str
    deployment: DeployResult | None
    summary: str


def complete_job(
    session: Session,
    job: JobSnapshot,
    tenant_hint: str | None,
    result_metrics: dict[str, float] | None = None,
) -> JobOutcome:
    """Record the terminal job and, if it succeeded, deploy it; end the event as done.

    Raises TenantMismatch / TenantUnknownForJob / TenantNotFound (for good), and leaves nothing
    written then (the caller's transaction rolls back). Idempotent: a second call for the same
    job updates the run row and finds its deployment already decided.
    """
    tenant, run, first_record = lock_and_write_run(
        session, job, from_event=tenant_hint, result_metrics=result_metrics
    )
    if job.status != "succeeded":
        summary = (
            f"job {job.status}" + (f": {job.error}" if job.error else "") + "; nothing deployed"
        )
        finish_event(session, job.job_id, EventState.DONE, summary)
        return JobOutcome(tenant.slug, job.status, None, summary)
    result = deploy_run(session, tenant, run, first_record=first_record)
    summary = f"deployment {result.status}" + (f": {result.reason}" if result.reason else "")
    if not result.newly_applied:
        summary = f"already handled ({summary})"
    finish_event(session, job.job_id, EventState.DONE, summary)
    return JobOutcome(tenant.slug, job.status, result, summary)


def fail_job(session: Session, job_id: str, reason: str) -> None:
    """End the event as failed for good, keeping the reason where operators look."""
    notices.job_failed(session, job_id, reason)
    finish_event(session, job_id, EventState.FAILED, reason)


def release_job(session: Session, job_id: str) -> None:
    """The attempt ends without an outcome (a retry is scheduled): clear its in-flight mark."""
    end_attempt(session, job_id)


def resume_deployment(
    session: Session, run_id: object, evaluation_id: object = None
) -> DeployResult:
    """An evaluation was recorded for the run: deploy it if it was waiting for one (`deploy`,
    idempotent), and end the evaluation's resume (named by `evaluation_id`, if any) with the
    outcome, in the same transaction. Raises RunNotFound (also for a malformed run id),
    InvalidInput for an evaluation id that is malformed or not the run's, RunNotDeployable while
    its job has not succeeded (its job_finished event deploys it when it does), and what
    `deploy` raises; the caller ends the resume with that reason (`end_resume`)."""
    try:
        key = uuid.UUID(str(run_id))
    except ValueError:
        raise RunNotFound(str(run_id)) from None
    run = session.get(FinetuningRun, key)
    if run is None:
        raise RunNotFound(str(run_id))
    evaluation = _evaluation_of(session, run, evaluation_id)
    result = deploy(session, run.tenant_id, run.id)
    if evaluation is not None:
        outcome = f"deployment {result.status}" + (f": {result.reason}" if result.reason else "")
        resumes.end_resume(session, run.id, evaluation.id, outcome)
    return result


def end_resume(session: Session, run_id: object, evaluation_id: object, reason: str) -> None:
    """The resume could not deploy (the run is not deployable yet, or it was refused): end the
    run's evaluation's resume with the reason, so that the reconciler does not send it again.
    Malformed or unknown ids, or an evaluation of another run, are nothing to end."""
    run_key, key = validation.as_uuid(run_id), validation.as_uuid(evaluation_id)
    if run_key is not None and key is not None:
        resumes.end_resume(session, run_key, key, reason)


def _evaluation_of(
    session: Session, run: FinetuningRun, evaluation_id: object
) -> Evaluation | None:
    if evaluation_id is None:
        return None  # a message from before resumes were kept, or from another system
    key = validation.uuid_id(evaluation_id, "evaluation_id")
    evaluation = session.get(Evaluation, key)
    if evaluation is None or evaluation.run_id != run.id:
        raise InvalidInput("evaluation_id", f"{key} is no evaluation of run {run.id}")
    return evaluation
