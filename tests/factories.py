"""Plain factory functions: `make_tenant(session, **overrides)` and friends. They flush, never
commit; the test decides."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from registry import deployments
from registry.jobs import runs
from registry.jobs.openai_jobs import JobSnapshot
from registry.models import Evaluation, FinetuningRun, Tenant
from registry.tenants import PolicyChanges, create_tenant, set_policy

_ids = itertools.count(1)


def make_tenant(session: Session, slug: str | None = None, **policy: Any) -> Tenant:
    tenant = create_tenant(session, slug or f"tenant-{next(_ids)}")
    if policy:
        set_policy(session, tenant.id, PolicyChanges(**policy))
    return tenant


def job_snapshot(**overrides: Any) -> JobSnapshot:
    number = next(_ids)
    values: dict[str, Any] = {
        "job_id": f"ftjob-{number:06d}",
        "status": "succeeded",
        "base_model": "gpt-4o-mini-2024-07-18",
        "fine_tuned_model": f"ft:gpt-4o-mini-2024-07-18:acme::m{number:06d}",
        "trained_tokens": 1000,
        "error": None,
        "finished_at": datetime(2026, 1, 1, tzinfo=UTC),
        "tenant": None,
        "result_files": (),
    }
    values.update(overrides)
    return JobSnapshot(**values)


def make_run(session: Session, tenant: Tenant, **overrides: Any) -> FinetuningRun:
    return runs.record_run(session, tenant, job_snapshot(**overrides))


def make_evaluation(
    session: Session, run: FinetuningRun, recommendation: str = "approve", **metrics: float
) -> Evaluation:
    return runs.record_evaluation(session, run.openai_job_id, recommendation, metrics)


def deploy_new(
    session: Session, tenant: Tenant, recommendation: str | None = "approve"
) -> deployments.DeployResult:
    """A new succeeded run for the tenant, evaluated, deployed by the tenant's policy."""
    run = make_run(session, tenant)
    if recommendation is not None:
        make_evaluation(session, run, recommendation, accuracy=0.9)
    return deployments.deploy(session, tenant.id, run.id)
