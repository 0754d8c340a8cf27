"""Outcome batches from the serving app: `POST /v1/tenants/{tenant}/outcomes`, or `/v1/outcomes`
with the tenant in the body. A batch id seen before for the tenant is acknowledged and not counted
again (`registry.canary.batches`); records the registry refuses are listed with their reason."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from registry import keys
from registry.canary.batches import store_batch
from registry.canary.outcomes import StoreResult
from registry.canary.resolver import resolver_for
from registry.db import unit_of_work
from registry.models import KeyRole
from registry.settings import get_settings
from worker import metrics
from worker.http import problems, schemas
from worker.http.auth import authorize, visible_tenant
from worker.http.schemas import (
    OutcomeBatchIn,
    OutcomeBatchOut,
    RefusedRecord,
    TenantOutcomeBatchIn,
)

ServeKey = Annotated[keys.Principal, authorize(KeyRole.SERVE)]
router = APIRouter(tags=["serving"])


def _store(principal: keys.Principal, tenant: str, body: OutcomeBatchIn) -> OutcomeBatchOut:
    settings = get_settings()
    with unit_of_work() as session:
        found = visible_tenant(session, principal, tenant)
        result = store_batch(
            session,
            body.batch_id,
            [record.as_record(str(found.id)) for record in body.records],
            bucket_seconds=settings.outcome_bucket_seconds,
            resolver=resolver_for(settings.database_url_value),
            tenant_id=found.id,
        )
    if not result.duplicate:
        metrics.outcomes_stored(StoreResult(result.recorded, result.refused))
    return OutcomeBatchOut(
        batch_id=result.batch_id,
        duplicate=result.duplicate,
        recorded=result.recorded,
        refused_count=result.refused_count,
        refused=[
            RefusedRecord(index=r.index, field=r.field, reason=r.reason) for r in result.refused
        ],
    )


@router.post(
    "/v1/tenants/{tenant}/outcomes",
    response_model=OutcomeBatchOut,
    responses=problems.common(404),
    summary="Record a batch of outcomes (counted once per batch id)",
)
def tenant_outcomes(
    tenant: schemas.TenantRef, body: OutcomeBatchIn, principal: ServeKey
) -> OutcomeBatchOut:
    return _store(principal, tenant, body)


@router.post(
    "/v1/outcomes",
    response_model=OutcomeBatchOut,
    responses=problems.common(404),
    summary="The same, with the tenant named in the body",
)
def outcomes(body: TenantOutcomeBatchIn, principal: ServeKey) -> OutcomeBatchOut:
    return _store(principal, body.tenant, body)
