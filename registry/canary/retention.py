"""Retention: beyond the newest K deprecated versions of a tenant, older ones become `archived`.

K is the tenant's policy `keep_deprecated` (default 3). "Newest" means most recently deprecated
(then the higher version number): the versions a rollback would return to are the ones that left
production last, so those are kept. An archived version is never restored by a rollback
(`versions.rollback` only returns deprecated versions) and never changes again automatically.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from registry import clock, versions
from registry.db import lock_tenant
from registry.models import DeploymentPolicy, ModelVersion, Tenant, VersionStatus

DEFAULT_KEEP = 3
ACTOR = "auto"


def _beyond_retention(tenant_id: uuid.UUID | None = None) -> Select[*tuple[Any, ...]]:
    """Deprecated versions ranked past their tenant's keep_deprecated: (tenant id, version id,
    version). One statement for all tenants."""
    recency = (
        func.row_number()
        .over(
            partition_by=ModelVersion.tenant_id,
            order_by=(ModelVersion.deprecated_at.desc().nulls_last(), ModelVersion.version.desc()),
        )
        .label("recency")
    )
    ranked = select(ModelVersion.tenant_id, ModelVersion.id, ModelVersion.version, recency).where(
        ModelVersion.status == VersionStatus.DEPRECATED
    )
    if tenant_id is not None:
        ranked = ranked.where(ModelVersion.tenant_id == tenant_id)
    table = ranked.subquery("ranked")
    keep = func.coalesce(DeploymentPolicy.keep_deprecated, DEFAULT_KEEP)
    return (
        select(table.c.tenant_id, table.c.id, table.c.version)
        .outerjoin(DeploymentPolicy, DeploymentPolicy.tenant_id == table.c.tenant_id)
        .where(table.c.recency > keep)
        .order_by(table.c.tenant_id, table.c.version)
    )


def tenants_to_archive(session: Session) -> list[tuple[uuid.UUID, str]]:
    """(id, slug) of the tenants with deprecated versions beyond their retention (one statement,
    no lock), in id order."""
    ids = {row.tenant_id for row in session.execute(_beyond_retention())}
    if not ids:
        return []
    rows = session.execute(select(Tenant.id, Tenant.slug).where(Tenant.id.in_(ids)))
    return sorted((row.id, row.slug) for row in rows)


def archive_beyond_retention(session: Session, tenant_id: uuid.UUID) -> list[int]:
    """Archive the tenant's deprecated versions beyond its retention; returns their numbers.

    Locks the tenant and decides under the lock (a concurrent sweep finds nothing left to do).
    Run it in a unit of work per tenant, so that one tenant's failure leaves the others' done.
    Writes one audit event (action "archive", actor "auto") when it archives anything; the split
    does not change. Idempotent.
    """
    tenant = lock_tenant(session, tenant_id)
    rows = session.execute(_beyond_retention(tenant_id)).all()
    if not rows:
        return []
    numbers = [row.version for row in rows]
    for row in rows:
        version = session.get_one(ModelVersion, row.id, populate_existing=True)
        version.status = VersionStatus.ARCHIVED
    session.flush()
    keep = session.scalar(
        select(DeploymentPolicy.keep_deprecated).where(DeploymentPolicy.tenant_id == tenant_id)
    )
    listed = ", ".join(f"v{n}" for n in numbers)
    reason = (
        f"archived {listed}: only the newest {DEFAULT_KEEP if keep is None else keep} deprecated "
        "versions are kept (policy keep_deprecated)"
    )
    versions.check_and_audit(
        session,
        tenant,
        action="archive",
        version=numbers[0] if len(numbers) == 1 else None,
        before=versions.current_split(session, tenant.id),
        actor=ACTOR,
        reason=reason,
        now=clock.now(),
    )
    return numbers
