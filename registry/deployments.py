"""Taking a run live: the evaluation gate, then the tenant's strategy, in one transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from registry import clock, traffic
from registry.db import lock_tenant
from registry.errors import RunNotDeployable, TenantMismatch
from registry.jobs.runs import latest_evaluation
from registry.models import (
    Deployment,
    DeploymentStatus,
    FinetuningRun,
    ModelVersion,
    Recommendation,
    Strategy,
    Tenant,
)
from registry.notify import notices
from registry.rows import insert_row, insert_rows
from registry.tenants import find_tenant, get_policy, initial_canary_percent
from registry.versions import (
    apply_split,
    check_and_audit,
    new_version,
    production_versions,
    register_version,
    serving_and_next_number,
    split_of,
)

# A number no version has: the new version's key in its split before it has its own.
_NEW = 0


@dataclass(frozen=True)
class DeployResult:
    status: DeploymentStatus
    version: int | None
    traffic_percent: int
    reason: str | None
    newly_applied: bool  # False when the run had already been deployed (a redelivery)


def deploy(
    session: Session,
    tenant_ref: str | uuid.UUID,
    run_id: uuid.UUID,
    *,
    actor: str = "worker",
) -> DeployResult:
    """Deploy the run's fine-tuned model for the tenant, by the tenant's policy.

    Evaluation gate: a `reject` recommendation records a rejected deployment with its reason; no
    evaluation, when the policy requires one, records `awaiting_evaluation` (call again once one
    is recorded). Otherwise, in this one transaction under the tenant's lock: register vN, apply
    the strategy (immediate 100%, canary its first step, blue-green staged at 0%), write the
    deployment row and one audit event. Nothing is half-done if any step fails.

    Idempotent: a run that already has a decided deployment returns it unchanged
    (`newly_applied=False`). Raises TenantNotFound, TenantMismatch, RunNotDeployable.
    """
    tenant = lock_tenant(session, find_tenant(session, tenant_ref).id)
    run = session.get_one(FinetuningRun, run_id, populate_existing=True)
    return deploy_run(session, tenant, run, actor=actor)


def deploy_run(
    session: Session,
    tenant: Tenant,
    run: FinetuningRun,
    *,
    actor: str = "worker",
    first_record: bool = False,
) -> DeployResult:
    """`deploy`, for a tenant already locked and its run read (or written) under that lock.

    `first_record`: the run row was created in this transaction, so nothing refers to it yet
    (no deployment, no evaluation): they are not looked up."""
    if run.tenant_id != tenant.id:
        raise TenantMismatch(
            run.openai_job_id, {"run row": str(run.tenant_id), "deploy": tenant.slug}
        )
    if run.status != "succeeded" or not run.fine_tuned_model:
        raise RunNotDeployable(run.openai_job_id, run.status)

    deployment = None
    if not first_record:
        deployment = session.scalars(
            select(Deployment).where(Deployment.run_id == run.id).with_for_update()
        ).one_or_none()
    if deployment is not None and deployment.status != DeploymentStatus.AWAITING_EVALUATION:
        return _result(session, deployment, newly_applied=False)

    policy = get_policy(session, tenant.id)
    now = clock.now()
    if deployment is None:
        deployment = Deployment(
            id=uuid.uuid4(),
            tenant_id=tenant.id,
            run_id=run.id,
            strategy=policy.strategy,
            auto_promote=policy.auto_promote,
            auto_promote_threshold=policy.auto_promote_threshold,
            status=DeploymentStatus.AWAITING_EVALUATION,
            created_at=now,
        )

    evaluation = None if first_record else latest_evaluation(session, run.id)
    if evaluation is not None and evaluation.recommendation == Recommendation.REJECT:
        return _decided(
            session,
            deployment,
            DeploymentStatus.REJECTED,
            f"evaluation {evaluation.id} recommends reject",
        )
    if evaluation is None and policy.require_evaluation:
        return _decided(
            session,
            deployment,
            DeploymentStatus.AWAITING_EVALUATION,
            "waiting for an evaluation (the policy requires one)",
        )

    number: int | None = None
    if session.get_bind().dialect.name == "postgresql":
        # The new version's number read with the split, under the lock: the version and its
        # deployment (whose reason names it) are then written by one statement, below.
        serving, number = serving_and_next_number(session, tenant.id)
    else:
        serving = production_versions(session, tenant.id)
    before = split_of(serving)
    strategy = Strategy(deployment.strategy)
    wanted = 0
    if strategy is not Strategy.BLUE_GREEN:
        wanted = 100 if strategy is Strategy.IMMEDIATE else initial_canary_percent(policy)
    # The new version's share does not depend on its number (a new one, unlike any serving):
    # it is inserted with it, in production already, and apply_split writes the rest.
    share = traffic.after_promote(before, _NEW, wanted)[_NEW] if wanted else 0
    fresh = not inspect(deployment).persistent
    # On PostgreSQL a fresh deployment's version goes in with it, by one statement (below); a
    # waiting deployment's is written first, before the deployment's changes refer to it.
    together = fresh and number is not None
    if number is None:
        version = register_version(session, tenant, run, evaluation, traffic_percent=share, now=now)
    else:
        version = new_version(
            tenant, run, evaluation, number=number, traffic_percent=share, now=now
        )
        if not together:
            insert_row(session, version)
    target: traffic.Split | None = None
    if strategy is Strategy.BLUE_GREEN:
        status = DeploymentStatus.STAGED
        reason = f"v{version.version} staged at 0% until an operator switches it"
    else:
        target = traffic.after_promote(before, version.version, wanted)
        status = DeploymentStatus.PROMOTED if share == 100 else DeploymentStatus.ACTIVE
        reason = f"v{version.version} {strategy.value} at {share}%"
        if share != wanted:
            reason += f" (nothing else serves, so it takes all traffic, not {wanted}%)"
    # Decided before it is written: the row is inserted once, complete (apply_split finds it
    # already in the state it would give it).
    deployment.version_id = version.id
    deployment.initial_traffic = share
    deployment.status = status
    deployment.reason = reason
    deployment.step_started_at = now if share else None
    deployment.updated_at = now
    # (A deployment that waited for its evaluation is in the session: its changes are flushed.)
    if together:
        insert_rows(session, version, deployment)
    elif fresh:
        insert_row(session, deployment)
    if target is not None:
        apply_split(
            session,
            tenant,
            target,
            now=now,
            promoted=version,
            serving=serving,
            promoted_deployment=deployment,
        )
    change = check_and_audit(
        session,
        tenant,
        action="deploy",
        version=version.version,
        before=before,
        actor=actor,
        reason=reason,
        now=now,
    )
    notices.deployment_decided(session, deployment, change=change)
    return DeployResult(status, version.version, share, reason, newly_applied=True)


def _decided(
    session: Session,
    deployment: Deployment,
    status: DeploymentStatus,
    reason: str,
) -> DeployResult:
    session.add(deployment)
    deployment.status = status
    deployment.reason = reason
    deployment.updated_at = clock.now()
    session.flush()
    notices.deployment_decided(session, deployment)
    return DeployResult(status, None, 0, reason, newly_applied=True)


def _result(session: Session, deployment: Deployment, *, newly_applied: bool) -> DeployResult:
    version = session.get(ModelVersion, deployment.version_id) if deployment.version_id else None
    return DeployResult(
        DeploymentStatus(deployment.status),
        version.version if version else None,
        version.traffic_percent if version else 0,
        deployment.reason,
        newly_applied=newly_applied,
    )
