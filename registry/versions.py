"""Model versions and their traffic: register, promote, roll back, list.

Every change here runs inside the caller's transaction, after `lock_tenant`, and ends with
`check_and_audit` (`registry.splits`): the invariant is checked and exactly one audit event is
written. The caller (a task, the CLI) commits.
"""

from __future__ import annotations

import typing
import uuid
from datetime import datetime

from sqlalchemy import (
    Select,
    String,
    Table,
    Uuid,
    and_,
    bindparam,
    cast,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.orm import Session

from registry import clock, traffic, validation
from registry.db import lock_tenant
from registry.errors import NothingToRollBack
from registry.models import (
    Evaluation,
    FinetuningRun,
    ModelVersion,
    Tenant,
    VersionStatus,
    in_production,
)
from registry.rows import attach_rows, execute, insert_row
from registry.splits import (
    Change,
    apply_split,
    check_and_audit,
    current_split,
    find_version,
    production_versions,
    split_of,
)
from registry.tenants import find_tenant

__all__ = [
    "Change",
    "apply_split",
    "check_and_audit",
    "current_split",
    "find_version",
    "list_versions",
    "new_version",
    "production_versions",
    "promote",
    "register_version",
    "rollback",
    "serving_and_next_number",
    "split_of",
]

_versions = ModelVersion.__table__.c
# The tenant's next version number, read and used in one statement (one round trip fewer than
# reading the latest first).
_NEXT_NUMBER = (
    select(func.coalesce(func.max(_versions.version), 0) + 1)
    .where(_versions.tenant_id == bindparam("b_tenant_id"))
    .scalar_subquery()
)
_INSERT_NEXT = (
    insert(typing.cast(Table, ModelVersion.__table__))
    .values(version=_NEXT_NUMBER, name=literal("v") + cast(_NEXT_NUMBER, String))
    .returning(_versions.version, _versions.name)
)


# PostgreSQL's deploy: the production versions and the next number in one read (the number is
# one row even when nothing serves), so the number is known before the version is written and
# its deployment, whose reason names it, can go in with it.
def _serving_and_next() -> Select[typing.Any]:
    table = typing.cast(Table, ModelVersion.__table__)
    tenant_id = bindparam("tenant_id", type_=Uuid())
    # The latest number by ORDER BY … LIMIT 1, not max(): a generic plan made while the table
    # was small aggregates every version of the tenant for max(), a cost that grows with its
    # history; this one reads the (tenant_id, version) index's last entry in any plan.
    latest = (
        select(_versions.version)
        .where(_versions.tenant_id == tenant_id)
        .order_by(_versions.version.desc())
        .limit(1)
        .scalar_subquery()
    )
    following = select((func.coalesce(latest, 0) + 1).label("next_number")).subquery("following")
    serving = and_(table.c.tenant_id == tenant_id, in_production(table.c.status))
    return (
        select(following.c.next_number, *table.c)
        .select_from(following.outerjoin(table, serving))
        .order_by(table.c.version)
    )


_SERVING_AND_NEXT = _serving_and_next()


def list_versions(session: Session, tenant_ref: str | uuid.UUID) -> list[ModelVersion]:
    """All versions of the tenant, newest first. Reads only; takes no lock."""
    tenant = find_tenant(session, tenant_ref)
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.tenant_id == tenant.id)
            .order_by(ModelVersion.version.desc())
        )
    )


def register_version(
    session: Session,
    tenant: Tenant,
    run: FinetuningRun,
    evaluation: Evaluation | None,
    *,
    traffic_percent: int = 0,
    now: datetime | None = None,
) -> ModelVersion:
    """Register the run's model as the tenant's next version, in staging at 0%; or, given a
    `traffic_percent` above 0, straight in production with that share, deployed at `now` (the
    caller then writes the rest of the split and checks the invariant, `apply_split` and
    `check_and_audit`, in the same transaction).

    Locks the tenant, so the next number is read and used under the lock: concurrent registrations
    get consecutive numbers, never the same one (the seed read, then inserted). One version per
    run is a database constraint. Does not write an audit event: the caller's change does.
    """
    lock_tenant(session, tenant.id)
    version = new_version(tenant, run, evaluation, traffic_percent=traffic_percent, now=now)
    # The number (and the name "vN") is computed by the INSERT itself, under the lock.
    insert_row(session, version, statement=_INSERT_NEXT, params={"b_tenant_id": tenant.id})
    return version


def new_version(
    tenant: Tenant,
    run: FinetuningRun,
    evaluation: Evaluation | None,
    *,
    number: int | None = None,
    traffic_percent: int = 0,
    now: datetime | None = None,
) -> ModelVersion:
    """`register_version`'s version, not yet written: numbered `number` (vN) when given (read
    by `serving_and_next_number` under the tenant's lock), else by the INSERT."""
    metrics = {**(run.result_metrics or {}), **(evaluation.metrics if evaluation else {})}
    version = ModelVersion(
        id=uuid.uuid4(),
        tenant_id=tenant.id,
        model_id=run.fine_tuned_model,
        status=VersionStatus.PRODUCTION if traffic_percent > 0 else VersionStatus.STAGING,
        run_id=run.id,
        evaluation_id=evaluation.id if evaluation else None,
        metrics=metrics,
        traffic_percent=traffic_percent,
        deployed_at=(now or clock.now()) if traffic_percent > 0 else None,
    )
    if number is not None:
        version.version = number
        version.name = f"v{number}"
    return version


def serving_and_next_number(
    session: Session, tenant_id: uuid.UUID
) -> tuple[list[ModelVersion], int]:
    """`production_versions`, and the number the tenant's next version takes, in one read.
    Locks the tenant first (free when this transaction holds the lock already, as a change
    does): the lock holds the number until the transaction ends, so a concurrent registration
    waits, then reads past the number this one used (one version per number stays a database
    constraint)."""
    lock_tenant(session, tenant_id)
    rows = execute(session, _SERVING_AND_NEXT, {"tenant_id": tenant_id}).mappings().all()
    serving = attach_rows(session, ModelVersion, [row for row in rows if row["id"] is not None])
    return serving, int(rows[0]["next_number"])


def promote(
    session: Session,
    tenant_ref: str | uuid.UUID,
    version: int,
    percent: int = 100,
    *,
    actor: str = "operator",
    reason: str | None = None,
    action: str = "promote",
) -> Change:
    """Give version `version` of the tenant `percent` (1..100) of its traffic.

    100 makes it the only production version (the others become deprecated). Below 100 the other
    production versions share the rest in proportion to their traffic, as exact integers (the
    seed gave each of them 100 - p). With no other production version it takes 100.

    Locks the tenant; checks the invariant; writes one audit event. Raises InvalidInput,
    TenantNotFound, VersionNotFound (also for another tenant's version). Promoting to the split
    that is already in force is a no-op change that is still audited.
    """
    percent = validation.traffic_percent(percent)
    number = validation.version_number(version)
    tenant = lock_tenant(session, find_tenant(session, tenant_ref).id)
    target_version = find_version(session, tenant, number)
    now = clock.now()
    before = current_split(session, tenant.id)
    target = traffic.after_promote(before, target_version.version, percent)
    apply_split(session, tenant, target, now=now, promoted=target_version)
    why = reason or f"v{number} to {target[number]}%"
    return check_and_audit(
        session,
        tenant,
        action=action,
        version=number,
        before=before,
        actor=actor,
        reason=why,
        now=now,
    )


def rollback(
    session: Session,
    tenant_ref: str | uuid.UUID,
    *,
    version: int | None = None,
    actor: str = "operator",
    reason: str | None = None,
    action: str = "rollback",
) -> Change:
    """Take the newest production version (or `version`) out of production.

    During a canary the canary is aborted and the remaining production versions are rescaled to
    100. If none remains, the version that served before it (the one deprecated most recently and
    never itself rolled back) returns to 100. A rolled-back version is never restored later.

    Locks the tenant; checks the invariant; writes one audit event. Raises NothingToRollBack
    (nothing changed) when nothing is in production, `version` is not, or there is nothing to
    return to.
    """
    tenant = lock_tenant(session, find_tenant(session, tenant_ref).id)
    serving = production_versions(session, tenant.id)
    if not serving:
        raise NothingToRollBack(tenant.slug, "no version is in production")
    # A given version (the sweep's failing canary while a newer one also serves) leaves instead
    # of the newest; it must be serving now, or the caller decided on stale state.
    leaving = (
        max(serving, key=lambda v: v.version)
        if version is None
        else next((v for v in serving if v.version == version), None)
    )
    if leaving is None:
        raise NothingToRollBack(tenant.slug, f"v{version} is not in production")
    before = split_of(serving)
    target = traffic.after_removal(before, leaving.version)
    restored: ModelVersion | None = None
    if not target:
        restored = _previous_version(session, tenant, leaving)
        if restored is None:
            raise NothingToRollBack(
                tenant.slug, f"v{leaving.version} is the only version that ever served"
            )
        target = {restored.version: 100}
    now = clock.now()
    leaving.rolled_back_at = now
    apply_split(session, tenant, target, now=now, rolled_back=leaving)
    why = reason or (
        f"v{leaving.version} rolled back; v{restored.version} restored to 100%"
        if restored is not None
        else f"v{leaving.version} rolled back; remaining versions rescaled"
    )
    return check_and_audit(
        session,
        tenant,
        action=action,
        version=leaving.version,
        before=before,
        actor=actor,
        reason=why,
        now=now,
    )


def _previous_version(
    session: Session, tenant: Tenant, leaving: ModelVersion
) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion)
        .where(
            ModelVersion.tenant_id == tenant.id,
            ModelVersion.status == VersionStatus.DEPRECATED,
            ModelVersion.rolled_back_at.is_(None),
            ModelVersion.deprecated_at.is_not(None),
            ModelVersion.id != leaving.id,
        )
        .order_by(ModelVersion.deprecated_at.desc(), ModelVersion.version.desc())
        .limit(1)
    ).one_or_none()
