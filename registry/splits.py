"""Writing a tenant's production split: the production versions read under the lock, a target
split applied to the versions and their deployments (`apply_split`), and the last step of every
change (`check_and_audit`): the invariant checked and exactly one audit event written.

Everything runs inside the caller's transaction, after `lock_tenant`; the caller commits.
`registry.versions` builds register, promote and roll back on it and re-exports these names.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import cast

from sqlalchemy import Table, bindparam, insert, or_, select
from sqlalchemy.orm import Session

from registry import routing, traffic
from registry.change_feed import note_change
from registry.db import after_commit, load_rows, update_row
from registry.errors import InvariantViolation, VersionNotFound
from registry.models import (
    Deployment,
    DeploymentStatus,
    ModelVersion,
    Tenant,
    TrafficEvent,
    VersionStatus,
)

# The hot path's statements, built once: a prebuilt statement's cache key is memoized, while
# building one per call costs more than running it.
_versions = ModelVersion.__table__.c
_SERVING_OR_STRAY = select(_versions.version, _versions.status, _versions.traffic_percent).where(
    _versions.tenant_id == bindparam("tenant_id"),
    or_(_versions.status == VersionStatus.PRODUCTION, _versions.traffic_percent != 0),
)
_PRODUCTION_VERSIONS = (
    select(ModelVersion.__table__)
    .where(
        _versions.tenant_id == bindparam("tenant_id"),
        _versions.status == VersionStatus.PRODUCTION,
    )
    .order_by(_versions.version)
)
_DEPLOYMENTS_OF = select(Deployment.__table__).where(
    Deployment.__table__.c.version_id.in_(bindparam("ids", expanding=True))
)
_AUDIT_INSERT = insert(cast(Table, TrafficEvent.__table__))


@dataclass(frozen=True)
class Change:
    """What one change did to a tenant's traffic, as recorded in the audit trail."""

    tenant: str
    action: str
    version: int | None
    before: traffic.Split
    after: traffic.Split
    reason: str
    actor: str = "operator"


def production_versions(session: Session, tenant_id: uuid.UUID) -> list[ModelVersion]:
    """The tenant's production versions, freshly read (call after taking the tenant's lock)."""
    return load_rows(session, ModelVersion, _PRODUCTION_VERSIONS, {"tenant_id": tenant_id})


def split_of(versions: list[ModelVersion]) -> traffic.Split:
    return {v.version: v.traffic_percent for v in versions if v.traffic_percent > 0}


def current_split(session: Session, tenant_id: uuid.UUID) -> traffic.Split:
    return split_of(production_versions(session, tenant_id))


def find_version(session: Session, tenant: Tenant, number: int) -> ModelVersion:
    """Version `number` of this tenant (never another tenant's). Raises VersionNotFound."""
    version = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.tenant_id == tenant.id, ModelVersion.version == number)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if version is None:
        raise VersionNotFound(tenant.slug, number)
    return version


def apply_split(
    session: Session,
    tenant: Tenant,
    target: traffic.Split,
    *,
    now: datetime,
    promoted: ModelVersion | None = None,
    rolled_back: ModelVersion | None = None,
    serving: list[ModelVersion] | None = None,
) -> None:
    """Make `target` the tenant's production split (tenant already locked).

    Versions in `target` become production with their share; production versions not in it become
    deprecated at 0%. Deployment rows follow: `promoted`'s deployment starts a new step (`active`,
    or `promoted` at 100%), any active deployment left at 100% is `promoted`, and one whose
    version left is `superseded` (`rolled_back` for `rolled_back`). `serving`: the tenant's
    production versions as `production_versions` read them under the lock in this transaction
    (read here when not given). The deployments of every version touched are read in one query.
    """
    before = production_versions(session, tenant.id) if serving is None else serving
    touched = {v.version: v for v in before}
    for version in (promoted, rolled_back):
        if version is not None and version.version in target:
            touched.setdefault(version.version, version)
    for number in target:
        if number not in touched:
            touched[number] = find_version(session, tenant, number)
    deployments = _deployments_of(session, list(touched.values()))
    for number, version in touched.items():
        share = target.get(number, 0)
        was_serving = version.status == VersionStatus.PRODUCTION
        deployment = deployments.get(version.id)
        if share > 0:
            deployed_at = now if not was_serving or version.deployed_at is None else None
            update_row(
                session,
                version,
                status=VersionStatus.PRODUCTION,
                traffic_percent=share,
                **({"deployed_at": deployed_at} if deployed_at else {}),
            )
            if version is promoted:
                _start_step(session, deployment, share, now)
            elif share == 100:
                _set_deployment_status(session, deployment, DeploymentStatus.PROMOTED, now)
        elif was_serving:
            update_row(
                session,
                version,
                status=VersionStatus.DEPRECATED,
                traffic_percent=0,
                deprecated_at=now,
            )
            left_as = (
                DeploymentStatus.ROLLED_BACK
                if version is rolled_back
                else DeploymentStatus.SUPERSEDED
            )
            _set_deployment_status(session, deployment, left_as, now)


# Each row is written at once by one cached UPDATE (`update_row`), not by a flush.


def _start_step(session: Session, deployment: Deployment | None, share: int, now: datetime) -> None:
    if deployment is None:
        return
    status = DeploymentStatus.PROMOTED if share == 100 else DeploymentStatus.ACTIVE
    if deployment.status == status and deployment.step_started_at == now:
        return  # inserted in this state by the deploy that started it
    update_row(session, deployment, step_started_at=now, status=status, updated_at=now)


def _set_deployment_status(
    session: Session, deployment: Deployment | None, status: DeploymentStatus, now: datetime
) -> None:
    # A deployment that was rejected or is still awaiting its evaluation has no live version.
    if deployment is not None and deployment.status not in (status, DeploymentStatus.REJECTED):
        update_row(session, deployment, status=status, updated_at=now)


def _deployments_of(session: Session, versions: list[ModelVersion]) -> dict[uuid.UUID, Deployment]:
    """The deployment of each version that has one, by version id: one query."""
    if not versions:
        return {}
    found = load_rows(session, Deployment, _DEPLOYMENTS_OF, {"ids": [v.id for v in versions]})
    return {d.version_id: d for d in found if d.version_id is not None}


def check_and_audit(
    session: Session,
    tenant: Tenant,
    *,
    action: str,
    version: int | None,
    before: traffic.Split,
    actor: str,
    reason: str,
    now: datetime,
) -> Change:
    """Check the invariant on what is now in the session and write the one audit event (the
    last step of every change; the caller's unit of work commits it). After that commit, this
    process's routing snapshots of the tenant are dropped.

    Raises InvariantViolation (the transaction must then be rolled back) if production traffic
    does not sum to 100 with every share in 1..100, or if a non-production version has traffic.
    """
    # Flushed first, then read back from the database in one query: the production versions
    # and any other version that has traffic (which breaks the invariant).
    session.flush()
    rows = session.execute(_SERVING_OR_STRAY, {"tenant_id": tenant.id}).all()
    after = {
        row.version: row.traffic_percent
        for row in rows
        if row.status == VersionStatus.PRODUCTION and row.traffic_percent > 0
    }
    stray = any(row.status != VersionStatus.PRODUCTION for row in rows)
    if not traffic.is_valid(after) or stray:
        raise InvariantViolation(tenant.slug, after)
    # The audit event, written at once (nothing reads it back in this transaction).
    session.execute(
        _AUDIT_INSERT,
        {
            "tenant_id": tenant.id,
            "action": action,
            "version": version,
            "actor": actor,
            "reason": reason,
            "split_before": traffic.as_json(before),
            "split_after": traffic.as_json(after),
            "created_at": now,
        },
    )
    # The change feed: routing caches everywhere learn of it when the transaction commits;
    # this process's own Routers at once, after the commit (read your own writes).
    generation = note_change(session, tenant.id)
    after_commit(session, partial(routing.forget_tenant, tenant.id, generation))
    return Change(tenant.slug, action, version, before, after, reason, actor)
