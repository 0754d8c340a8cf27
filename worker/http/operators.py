"""Operator endpoints: the CLI's commands over HTTP, with the same registry calls, the same
validation and the same audit trail (the key's name is the actor).

`read` keys read; `operate` keys queue promotions and rollbacks and announce jobs and
evaluations; `admin` keys add tenants and change policies. A scoped key sees only its tenants.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from registry import audit, clock, keys, messages, operations, records, validation, versions
from registry.canary.canaries import assess, read_live_canaries
from registry.db import unit_of_work
from registry.errors import OperationNotFound, RunNotFound
from registry.jobs import events, runs
from registry.models import KeyRole, Operation, OperationKind, Tenant
from registry.tenants import PolicyChanges, create_tenant, get_policy, list_tenants, set_policy
from worker.http import problems, schemas
from worker.http.auth import authorize, visible_tenant

ReadKey = Annotated[keys.Principal, authorize(KeyRole.READ)]
OperateKey = Annotated[keys.Principal, authorize(KeyRole.OPERATE)]
AdminKey = Annotated[keys.Principal, authorize(KeyRole.ADMIN)]
Limit = Annotated[int, Query(ge=1, le=1000)]

log = logging.getLogger("ftdeploy.http")
router = APIRouter(tags=["operators"])
Row = TypeVar("Row")
NOT_FOUND = problems.common(404)
REFUSED = problems.common(404, 409)


def _tenant(t: Tenant) -> schemas.Tenant:
    return schemas.Tenant(slug=t.slug, id=str(t.id), created_at=t.created_at.isoformat())


def _tenant_records(
    principal: keys.Principal,
    tenant: str,
    read: Callable[[Session, uuid.UUID], Iterable[Row]],
    shape: Callable[[Row], dict[str, Any]],
) -> list[dict[str, Any]]:
    """A read of one tenant's rows, as records: the tenant must be visible to the key."""
    with unit_of_work() as session:
        found = visible_tenant(session, principal, tenant)
        return [shape(row) for row in read(session, found.id)]


def _changes(body: schemas.PolicyIn) -> PolicyChanges:
    return PolicyChanges(
        strategy=body.strategy,
        canary_percent=body.canary_percent,
        canary_steps=tuple(body.canary_steps) if body.canary_steps is not None else None,
        auto_promote=body.auto_promote,
        auto_promote_threshold=body.threshold,
        metric=body.metric,
        min_samples=body.min_samples,
        bake_seconds=body.bake_seconds,
        progress_deadline_seconds=body.deadline_seconds,
        auto_rollback=body.auto_rollback,
        require_evaluation=body.require_evaluation,
        keep_deprecated=body.keep_deprecated,
    )


@router.get("/v1/tenants", response_model=list[schemas.Tenant], responses=problems.common())
def tenants(principal: ReadKey) -> list[schemas.Tenant]:
    with unit_of_work() as session:
        return [_tenant(t) for t in list_tenants(session) if principal.sees(t.id)]


@router.post("/v1/tenants", status_code=201, response_model=schemas.Policy, responses=REFUSED)
def add_tenant(body: schemas.TenantIn, principal: AdminKey) -> dict[str, Any]:
    if principal.tenant_ids is not None:
        # A scoped key could not see the tenant it made; only unscoped admins add tenants.
        raise problems.Forbidden("a key scoped to tenants cannot add tenants")
    with unit_of_work() as session:
        tenant = create_tenant(session, body.slug, actor=principal.name)
        changes = _changes(body)
        return records.policy(tenant, set_policy(session, tenant.id, changes, actor=principal.name))


@router.get("/v1/tenants/{tenant}/policy", response_model=schemas.Policy, responses=NOT_FOUND)
def policy(tenant: schemas.TenantRef, principal: ReadKey) -> dict[str, Any]:
    with unit_of_work() as session:
        found = visible_tenant(session, principal, tenant)
        return records.policy(found, get_policy(session, found.id))


@router.patch("/v1/tenants/{tenant}/policy", response_model=schemas.Policy, responses=NOT_FOUND)
def change_policy(
    tenant: schemas.TenantRef, body: schemas.PolicyIn, principal: AdminKey
) -> dict[str, Any]:
    with unit_of_work() as session:
        found = visible_tenant(session, principal, tenant)
        changes = _changes(body)
        return records.policy(found, set_policy(session, found.id, changes, actor=principal.name))


@router.get(
    "/v1/tenants/{tenant}/versions", response_model=list[schemas.Version], responses=NOT_FOUND
)
def list_versions(tenant: schemas.TenantRef, principal: ReadKey) -> list[dict[str, Any]]:
    return _tenant_records(principal, tenant, versions.list_versions, records.version)


@router.get(
    "/v1/tenants/{tenant}/history",
    response_model=list[schemas.TrafficChange],
    responses=NOT_FOUND,
)
def history(
    tenant: schemas.TenantRef, principal: ReadKey, limit: Limit = 50
) -> list[dict[str, Any]]:
    read = partial(audit.history, limit=limit)
    return _tenant_records(principal, tenant, read, records.traffic_event)


@router.get(
    "/v1/tenants/{tenant}/activity", response_model=list[schemas.Activity], responses=NOT_FOUND
)
def activity(
    tenant: schemas.TenantRef, principal: ReadKey, limit: Limit = 50
) -> list[dict[str, Any]]:
    read = partial(audit.activity, limit=limit)
    return _tenant_records(principal, tenant, read, records.activity)


@router.get("/v1/events", response_model=list[schemas.JobEvent], responses=problems.common())
def job_events(
    principal: ReadKey,
    state: Annotated[str | None, Query(pattern="^(received|done|failed)$")] = None,
    limit: Limit = 50,
) -> list[dict[str, Any]]:
    with unit_of_work() as session:
        scope = None
        if principal.tenant_ids is not None:
            scope = [t for t in list_tenants(session) if principal.sees(t.id)]
        rows = audit.job_events(session, state, limit, tenants=scope)
        return [records.job_event(e) for e in rows]


@router.get("/v1/status", response_model=list[schemas.CanaryStatus], responses=NOT_FOUND)
def status(
    principal: ReadKey, tenant: Annotated[str | None, Query(max_length=100)] = None
) -> list[dict[str, Any]]:
    now = clock.now()
    with unit_of_work() as session:
        tenant_id = visible_tenant(session, principal, tenant).id if tenant else None
        canaries = read_live_canaries(session, tenant_id)
    assessed = assess(canaries, now)
    return [records.canary_status(a, now) for a in assessed if principal.sees(a.canary.tenant_id)]


# -- queued operations ---------------------------------------------------------------------------


def _operation(operation: Operation, slug: str) -> dict[str, Any]:
    return {**records.operation(operation), "tenant": slug}


def _queue(
    principal: keys.Principal, tenant: str, kind: OperationKind, response: Response, **args: Any
) -> dict[str, Any]:
    with unit_of_work() as session:
        found = visible_tenant(session, principal, tenant)
        held = messages.hold_messages(session)
        operation = operations.queue_operation(
            session, found.id, kind, actor=principal.name, **args
        )
        operations.send(session, operation)
        data = _operation(operation, found.slug)
    data["enqueued"] = _send_held(held)
    response.headers["Location"] = f"/v1/operations/{data['operation_id']}"
    return data


def _send_held(held: list[messages.Message]) -> bool:
    """Send, after the commit, the messages the unit of work held; False when the broker did not
    take them (the request is recorded all the same, and the reconciler sends them)."""
    unsent = messages.deliver_held(held)
    if unsent is not None:
        log.warning("message.unsent", extra={"ftdeploy_fields": {"error": unsent}})
    return unsent is None


@router.post(
    "/v1/tenants/{tenant}/promote",
    status_code=202,
    response_model=schemas.Operation,
    responses=NOT_FOUND,
    summary="Queue a promotion; follow the Location to its result",
)
def promote(
    tenant: schemas.TenantRef, body: schemas.PromoteIn, principal: OperateKey, response: Response
) -> dict[str, Any]:
    version = validation.version_number(body.version)
    return _queue(
        principal,
        tenant,
        OperationKind.PROMOTE,
        response,
        version=version,
        traffic_percent=body.traffic_percent,
        reason=body.reason,
        force=body.force,
    )


@router.post(
    "/v1/tenants/{tenant}/rollback",
    status_code=202,
    response_model=schemas.Operation,
    responses=NOT_FOUND,
    summary="Queue a rollback; follow the Location to its result",
)
def rollback(
    tenant: schemas.TenantRef,
    principal: OperateKey,
    response: Response,
    body: schemas.RollbackIn | None = None,
) -> dict[str, Any]:
    reason = body.reason if body is not None else None
    force = body.force if body is not None else False
    return _queue(principal, tenant, OperationKind.ROLLBACK, response, reason=reason, force=force)


@router.get("/v1/operations/{operation_id}", response_model=schemas.Operation, responses=NOT_FOUND)
def operation(operation_id: schemas.OperationId, principal: ReadKey) -> dict[str, Any]:
    with unit_of_work() as session:
        found = operations.get_operation(session, operation_id)
        if not principal.sees(found.tenant_id):
            raise OperationNotFound(operation_id)
        return _operation(found, _slug(session, found))


@router.get("/v1/operations", response_model=list[schemas.Operation], responses=NOT_FOUND)
def list_operations(
    principal: ReadKey,
    tenant: Annotated[str | None, Query(max_length=100)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    limit: Limit = 50,
) -> list[dict[str, Any]]:
    with unit_of_work() as session:
        tenant_id = visible_tenant(session, principal, tenant).id if tenant else None
        scope = None
        if principal.tenant_ids is not None:
            scope = [t.id for t in list_tenants(session) if principal.sees(t.id)]
        rows = operations.list_operations(
            session, tenant_id, status=status, limit=limit, tenant_ids=scope
        )
        return [_operation(o, slug) for o, slug in rows]


@router.post(
    "/v1/operations/{operation_id}/cancel",
    response_model=schemas.Operation,
    responses=REFUSED,
    summary="Cancel a queued operation (409 when it is running or has ended)",
)
def cancel_operation(
    operation_id: schemas.OperationId,
    principal: OperateKey,
    body: schemas.CancelIn | None = None,
) -> dict[str, Any]:
    with unit_of_work() as session:
        found = operations.get_operation(session, operation_id)
        if not principal.sees(found.tenant_id):
            raise OperationNotFound(operation_id)
        reason = body.reason if body is not None else None
        cancelled = operations.cancel_operation(
            session, found.id, actor=principal.name, reason=reason
        )
        return _operation(cancelled, _slug(session, cancelled))


def _slug(session: Session, operation: Operation) -> str:
    tenant = session.get_one(Tenant, operation.tenant_id)
    return tenant.slug


# -- the training pipeline -----------------------------------------------------------------------


@router.post(
    "/v1/jobs/{job_id}/finished",
    status_code=202,
    response_model=schemas.JobQueued,
    responses=NOT_FOUND,
    summary="A fine-tuning job finished: deploy it by its tenant's policy",
)
def job_finished(
    job_id: schemas.JobId, principal: OperateKey, body: schemas.JobFinishedIn | None = None
) -> dict[str, Any]:
    tenant = body.tenant if body is not None else None
    job_id = validation.job_id(job_id)
    if tenant is None and principal.tenant_ids is not None:
        # Otherwise a scoped key could deploy a job of a tenant it cannot see.
        raise problems.Forbidden("a key scoped to tenants must name the job's tenant")
    with unit_of_work() as session:
        slug = visible_tenant(session, principal, tenant).slug if tenant else None
        held = messages.hold_messages(session)
        refusal = events.publish_event(session, job_id, slug, "api")
    if refusal is not None:
        raise refusal  # after the commit: the refusal stays in the audit trail (409)
    return {"job_id": job_id, "tenant": slug, "queued": True, "enqueued": _send_held(held)}


@router.post(
    "/v1/jobs/{job_id}/evaluation",
    status_code=201,
    response_model=schemas.EvaluationOut,
    responses=NOT_FOUND,
    summary="Record an evaluation of a job's run (resumes a deployment waiting for it)",
)
def evaluation(
    job_id: schemas.JobId, body: schemas.EvaluationIn, principal: OperateKey
) -> dict[str, Any]:
    metrics = runs.parse_metrics(body.metrics)
    with unit_of_work() as session:
        run = runs.find_run(session, job_id)
        if not principal.sees(run.tenant_id):
            raise RunNotFound(job_id)
        held = messages.hold_messages(session)
        recorded = runs.record_evaluation(
            session, job_id, body.recommendation, metrics, resume=body.resume
        )
        data: dict[str, Any] = {
            "evaluation_id": str(recorded.id),
            "job_id": job_id,
            "recommendation": recorded.recommendation,
            "metrics": recorded.metrics,
        }
    data["resume_enqueued"] = _send_held(held) if body.resume else None
    return data
