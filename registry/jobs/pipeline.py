"""From a finished fine-tuning job to serving traffic: the event's domain steps.

The worker polls OpenAI outside any transaction (`registry.jobs.openai_jobs`), then calls
`complete_job` in one unit of work: resolve the tenant, record the run, and deploy through the
evaluation gate. Failures for good end the event with their reason (`fail_job`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from registry.db import lock_tenant
from registry.deployments import DeployResult, deploy
from registry.jobs.events import end_attempt, finish_event
from registry.jobs.openai_jobs import JobSnapshot
from registry.jobs.runs import record_run, tenant_for_job
from registry.models import EventState
from registry.notify import notices


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
    tenant = tenant_for_job(session, job.job_id, from_event=tenant_hint, from_job=job.tenant)

    lock_tenant(session, tenant.id)
    run = record_run(session, tenant, job, result_metrics)
    if job.status != "succeeded":
        summary = (
            f"job {job.status}" + (f": {job.error}" if job.error else "") + "; nothing deployed"
        )
        finish_event(session, job.job_id, EventState.DONE, summary)
        return JobOutcome(tenant.slug, job.status, None, summary)
    result = deploy(session, tenant.id, run.id)
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
