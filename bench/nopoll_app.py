"""The worker benchmark's ceiling: ftdeploy's own app with OpenAI's two polls answered in the
process (`celery -A bench.nopoll_app worker`). Every other step of a job-finished event runs as in
production: the attempt, the run, the deployment under the tenant's lock, the event's end.

The answers are what the fake OpenAI would have said of the benchmark's jobs (a succeeded job of
the tenant its number names, the fake's default result metrics), built without the SDK, HTTP or
parsing: the rate this worker reaches is what the rest of the path allows, so the gap to the real
worker's is what the two polls cost. Only the benchmark loads this module; production never does.
"""

from __future__ import annotations

import hashlib
from typing import Any

from bench.bench_worker import tenant_of
from registry.jobs.openai_jobs import JobSnapshot
from worker import tasks
from worker.app import app
from worker.demo.fake_openai_jobs import DEFAULT_METRICS, DEFAULT_MODEL

__all__ = ["app"]


def answered_job(_client: Any, job_id: str) -> JobSnapshot:
    """`fetch_job`'s answer for one of the benchmark's jobs: succeeded, with a model of its own."""
    suffix = hashlib.sha256(job_id.encode()).hexdigest()[:8]
    return JobSnapshot(
        job_id=job_id,
        status="succeeded",
        base_model=DEFAULT_MODEL,
        fine_tuned_model=f"ft:{DEFAULT_MODEL}:acme::{suffix}",
        trained_tokens=48_210,
        error=None,
        finished_at=None,
        tenant=tenant_of(job_id),
        result_files=(f"file-result{suffix}",),
    )


def answered_metrics(_client: Any, _snapshot: JobSnapshot) -> dict[str, float]:
    """`fetch_result_metrics`'s answer: the final row the fake's result file would hold."""
    return dict(DEFAULT_METRICS)


# Replaced where the task looks them up; the pool processes inherit the change when they fork.
tasks.fetch_job = answered_job
tasks.fetch_result_metrics = answered_metrics
