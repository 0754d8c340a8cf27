"""Fine-tuning runs (one per OpenAI job) and their evaluations."""

from __future__ import annotations

import math
import uuid
from functools import lru_cache
from typing import Any

from sqlalchemy import Uuid, bindparam, select
from sqlalchemy.orm import Session

from registry import clock, dialect
from registry.db import lock_tenant
from registry.errors import InvalidInput, RunNotFound, TenantMismatch, TenantUnknownForJob
from registry.jobs import resumes
from registry.jobs.openai_jobs import JobSnapshot
from registry.models import DeploymentPolicy, Evaluation, FinetuningRun, Recommendation, Tenant
from registry.rows import attach_rows, execute, insert_row, load_rows
from registry.tenants import find_tenant, lock_named_tenant, policy_read_under_lock

MAX_METRICS = 100


def find_run(session: Session, job_id: str) -> FinetuningRun:
    run = session.scalars(
        select(FinetuningRun).where(FinetuningRun.openai_job_id == job_id)
    ).one_or_none()
    if run is None:
        raise RunNotFound(job_id)
    return run


def tenant_for_job(
    session: Session, job_id: str, *, from_event: str | None, from_job: str | None
) -> Tenant:
    """The tenant a job belongs to, from the event, the run row and the job's metadata.

    Every source that names one must name the same tenant (by slug or id): a disagreement raises
    TenantMismatch, none at all TenantUnknownForJob. Unknown names raise TenantNotFound.
    """
    claims: dict[str, Tenant] = {}
    run = _find_run(session, job_id)
    if run is not None:
        claims["run row"] = session.get_one(Tenant, run.tenant_id)
    if from_event:
        claims["event"] = find_tenant(session, from_event)
    if from_job:
        claims["job metadata"] = find_tenant(session, from_job)
    return _agreed(job_id, claims)


def lock_job_tenant(
    session: Session, job_id: str, *, from_event: str | None, from_job: str | None
) -> tuple[Tenant, FinetuningRun | None]:
    """`tenant_for_job`, with the tenant locked (`lock_tenant`) and the job's run row (None
    before it is first recorded) read under that lock, in as few statements as the sources
    allow: the first tenant named is found and locked at once. Raises what `tenant_for_job`
    raises, and then leaves nothing written."""
    named = [
        (source, ref)
        for source, ref in (("event", from_event), ("job metadata", from_job))
        if ref is not None and ref
    ]
    if named:
        tenant = lock_named_tenant(session, named[0][1])
    else:
        owner = session.scalar(
            select(FinetuningRun.tenant_id).where(FinetuningRun.openai_job_id == job_id)
        )
        if owner is None:
            raise TenantUnknownForJob(job_id)
        tenant = lock_tenant(session, owner)
    run = _find_run(session, job_id, fresh=True)
    claims: dict[str, Tenant] = {}
    if run is not None:
        claims["run row"] = session.get_one(Tenant, run.tenant_id)
    for source, ref in named:
        same = ref == named[0][1]
        claims[source] = tenant if same else find_tenant(session, ref)
    return _agreed(job_id, claims), run


def lock_and_write_run(
    session: Session,
    job: JobSnapshot,
    *,
    from_event: str | None,
    result_metrics: dict[str, float] | None = None,
) -> tuple[Tenant, FinetuningRun, bool]:
    """`lock_job_tenant`, then `write_run`: the tenant locked, the claims agreed and the job's
    run row created or updated. Returns (tenant, run, first_record): first_record when the row
    was created by this call. Raises what `lock_job_tenant` and `write_run` raise, and then
    leaves nothing that the caller's rollback does not undo.

    When a source names the tenant, the row is read by writing it, one statement under the lock:
    an upsert (INSERT … ON CONFLICT DO UPDATE … RETURNING) that inserts the new row or returns
    the one already there as committed now (and locks it)."""
    named = [ref for ref in (from_event, job.tenant) if ref]
    if not named:
        tenant, run = lock_job_tenant(session, job.job_id, from_event=None, from_job=None)
        return tenant, write_run(session, tenant, job, run, result_metrics), run is None
    tenant = lock_named_tenant(session, named[0])
    new = _new_run(tenant, job, result_metrics)
    values = {column.key: getattr(new, column.key) for column in _runs.c}
    dialect_name = session.get_bind().dialect.name
    if dialect_name == "postgresql":
        # The same statement reads the tenant's policy, under the lock taken just before.
        row = execute(session, _UPSERT_RUN_AND_POLICY, {**values, "policy_of": tenant.id}).one()
        run = attach_rows(session, FinetuningRun, [row._mapping])[0]
        policy = {c.key: row._mapping[f"policy_{c.key}"] for c in _policies.c}
        policy_read_under_lock(session, tenant.id, policy if policy["tenant_id"] else None)
    else:
        run = load_rows(session, FinetuningRun, _upsert_run(dialect_name), values)[0]
    first_record = run.id == new.id
    claims: dict[str, Tenant] = {}
    if not first_record:
        claims["run row"] = session.get_one(Tenant, run.tenant_id)
    for source, ref in (("event", from_event), ("job metadata", job.tenant)):
        if ref:
            claims[source] = tenant if ref == named[0] else find_tenant(session, ref)
    tenant = _agreed(job.job_id, claims)
    if first_record:
        return tenant, run, True
    return tenant, write_run(session, tenant, job, run, result_metrics), False


_runs = FinetuningRun.__table__


@lru_cache(maxsize=2)
def _upsert_run(dialect_name: str) -> Any:
    # DO UPDATE, not DO NOTHING: only then does RETURNING give the row already there. The
    # update sets nothing new; write_run writes what changed.
    insert = dialect.insert_for(dialect_name, _runs)
    return insert.on_conflict_do_update(
        index_elements=[_runs.c.openai_job_id],
        set_={"openai_job_id": insert.excluded.openai_job_id},
    ).returning(*_runs.c)


_policies = DeploymentPolicy.__table__
_upserted = (
    _upsert_run("postgresql")
    .values({c.key: bindparam(c.key, type_=c.type) for c in _runs.c})
    .cte("upserted")
)
# PostgreSQL: the run's upsert, and the tenant's policy row (NULLs when it has none).
_UPSERT_RUN_AND_POLICY = select(
    *_upserted.c, *(column.label(f"policy_{column.key}") for column in _policies.c)
).select_from(
    _upserted.outerjoin(_policies, _policies.c.tenant_id == bindparam("policy_of", type_=Uuid()))
)


def _new_run(
    tenant: Tenant, job: JobSnapshot, result_metrics: dict[str, float] | None
) -> FinetuningRun:
    return FinetuningRun(
        id=uuid.uuid4(),
        tenant_id=tenant.id,
        openai_job_id=job.job_id,
        status=job.status,
        base_model=job.base_model,
        fine_tuned_model=job.fine_tuned_model,
        trained_tokens=job.trained_tokens,
        error=job.error,
        finished_at=job.finished_at,
        result_metrics=dict(result_metrics or {}),
        created_at=clock.now(),
    )


def _agreed(job_id: str, claims: dict[str, Tenant]) -> Tenant:
    if not claims:
        raise TenantUnknownForJob(job_id)
    if len({tenant.id for tenant in claims.values()}) > 1:
        raise TenantMismatch(job_id, {source: t.slug for source, t in claims.items()})
    return next(iter(claims.values()))


def _find_run(session: Session, job_id: str, *, fresh: bool = False) -> FinetuningRun | None:
    if fresh:  # read under the tenant's lock: what is committed now, not what the ORM holds
        found = load_rows(session, FinetuningRun, _RUN_OF_JOB, {"job_id": job_id})
        return found[0] if found else None
    query = select(FinetuningRun).where(FinetuningRun.openai_job_id == job_id)
    return session.scalars(query).one_or_none()


_RUN_OF_JOB = select(FinetuningRun.__table__).where(
    FinetuningRun.__table__.c.openai_job_id == bindparam("job_id")
)


def record_run(
    session: Session,
    tenant: Tenant,
    job: JobSnapshot,
    result_metrics: dict[str, float] | None = None,
) -> FinetuningRun:
    """Create or update the run row of `job` for `tenant`. Idempotent; the caller holds the
    tenant's lock, so two events for one job cannot both insert (and the job id is unique)."""
    run = write_run(session, tenant, job, _find_run(session, job.job_id), result_metrics)
    session.flush()
    return run


def write_run(
    session: Session,
    tenant: Tenant,
    job: JobSnapshot,
    run: FinetuningRun | None,
    result_metrics: dict[str, float] | None = None,
) -> FinetuningRun:
    """`record_run` given the job's run row (None: there is none yet) as read under the
    tenant's lock in this transaction (`lock_job_tenant`). Raises TenantMismatch when the row is
    another tenant's."""
    if run is None:
        # Inserted whole, at once (a run is not written again in this transaction).
        run = _new_run(tenant, job, result_metrics)
        insert_row(session, run)
        return run
    if run.tenant_id != tenant.id:
        raise TenantMismatch(job.job_id, {"run row": str(run.tenant_id), "event": tenant.slug})
    run.status = job.status
    run.base_model = job.base_model
    run.fine_tuned_model = job.fine_tuned_model
    run.trained_tokens = job.trained_tokens
    run.error = job.error
    run.finished_at = job.finished_at
    if result_metrics:
        run.result_metrics = dict(result_metrics)
    return run


def parse_metrics(pairs: list[str] | dict[str, Any] | None) -> dict[str, float]:
    """Metrics from `k=v` strings (CLI) or a mapping (API): finite numbers under plain names."""
    if not pairs:
        return {}
    items: list[tuple[str, Any]]
    if isinstance(pairs, dict):
        items = list(pairs.items())
    else:
        items = []
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep:
                raise InvalidInput("metric", f"{pair!r} is not of the form name=value")
            items.append((name.strip(), value.strip()))
    if len(items) > MAX_METRICS:
        raise InvalidInput("metrics", f"at most {MAX_METRICS} are accepted")
    metrics: dict[str, float] = {}
    for name, value in items:
        if not name or len(name) > 64 or not name.replace("_", "").replace(".", "").isalnum():
            raise InvalidInput("metric name", f"{name!r} must be letters, digits, '_' or '.'")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidInput("metric value", f"{name}={value!r} is not a number") from None
        if isinstance(value, bool) or not math.isfinite(number):
            raise InvalidInput("metric value", f"{name}={value!r} is not a finite number")
        metrics[name] = number
    return metrics


def record_evaluation(
    session: Session,
    job_id: str,
    recommendation: str,
    metrics: dict[str, float] | None = None,
    *,
    resume: bool = False,
) -> Evaluation:
    """Record an evaluation of the job's run. Raises InvalidInput, RunNotFound (nothing written).
    Not idempotent: each call adds an evaluation, and the newest one counts. With `resume`, the
    worker is asked after the commit to resume the run's deployment if it waits for one
    (`ftdeploy.evaluation_recorded`); the request is stored with the evaluation, so that one the
    broker never got, or lost, is sent again (`registry.jobs.resumes`)."""
    if recommendation not in set(Recommendation):
        allowed = ", ".join(r.value for r in Recommendation)
        raise InvalidInput("recommendation", f"{recommendation!r} is not one of {allowed}")
    run = find_run(session, job_id)
    evaluation = Evaluation(run_id=run.id, recommendation=recommendation, metrics=metrics or {})
    session.add(evaluation)
    session.flush()
    if resume:
        resumes.request_resume(session, evaluation)
    return evaluation


def latest_evaluation(session: Session, run_id: uuid.UUID) -> Evaluation | None:
    return session.scalars(
        select(Evaluation)
        .where(Evaluation.run_id == run_id)
        .order_by(Evaluation.created_at.desc(), Evaluation.id.desc())
        .limit(1)
    ).one_or_none()
