"""Writing a tenant's production split: the production versions read under the lock, a target
split applied to the versions and their deployments (`apply_split`), and the last step of every
change (`check_and_audit`): the invariant checked and exactly one audit event written.

Everything runs inside the caller's transaction, after `lock_tenant`; the caller commits.
`registry.versions` builds register, promote and roll back on it and re-exports these names.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, cast

from sqlalchemy import (
    Integer,
    Select,
    String,
    Table,
    Uuid,
    and_,
    bindparam,
    func,
    insert,
    select,
    true,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from registry import change_feed, routing, traffic
from registry.change_feed import note_change
from registry.db import after_commit
from registry.errors import InvariantViolation, VersionNotFound
from registry.models import (
    Deployment,
    DeploymentStatus,
    ModelVersion,
    Tenant,
    TrafficEvent,
    UTCDateTime,
    VersionStatus,
    in_production,
)
from registry.rows import execute, load_rows, update_row
from registry.split_statements import DEPRECATE_AND_MOVE, MOVE_DEPLOYMENTS

# The hot path's statements, built once: a prebuilt statement's cache key is memoized, while
# building one per call costs more than running it.
_versions = ModelVersion.__table__.c
# The table's check constraint (traffic_matches_status) keeps traffic on production versions
# only, and some on each: the production versions are the whole split.
_PRODUCTION_SPLIT = select(_versions.version, _versions.traffic_percent).where(
    _versions.tenant_id == bindparam("tenant_id"), in_production(_versions.status)
)
_PRODUCTION_VERSIONS = (
    select(ModelVersion.__table__)
    .where(_versions.tenant_id == bindparam("tenant_id"), in_production(_versions.status))
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
    promoted_deployment: Deployment | None = None,
) -> None:
    """Make `target` the tenant's production split (tenant already locked).

    Versions in `target` become production with their share; production versions not in it become
    deprecated at 0%. Deployment rows follow: `promoted`'s deployment starts a new step (`active`,
    or `promoted` at 100%), any active deployment left at 100% is `promoted`, and one whose
    version left is `superseded` (`rolled_back` for `rolled_back`). `serving`: the tenant's
    production versions as `production_versions` read them under the lock in this transaction
    (read here when not given). `promoted_deployment`: `promoted`'s deployment, when the caller
    has it (read here otherwise). The other deployments are not read: each status they move to
    is one UPDATE of those not already in it (nor rejected).
    """
    before = production_versions(session, tenant.id) if serving is None else serving
    touched = {v.version: v for v in before}
    for version in (promoted, rolled_back):
        if version is not None and version.version in target:
            touched.setdefault(version.version, version)
    for number in target:
        if number not in touched:
            touched[number] = find_version(session, tenant, number)
    moves: dict[DeploymentStatus, list[uuid.UUID]] = {}
    # PostgreSQL: the versions that leave are written with the first move of deployments below
    # (one round trip for both; a version that leaves always has its deployments moved).
    leaving: list[ModelVersion] = []
    deferred = session.get_bind().dialect.name == "postgresql"
    for number, version in touched.items():
        share = target.get(number, 0)
        was_serving = version.status == VersionStatus.PRODUCTION
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
                deployment = promoted_deployment or _deployment_of(session, version)
                _start_step(session, deployment, share, now)
            elif share == 100:
                moves.setdefault(DeploymentStatus.PROMOTED, []).append(version.id)
        elif was_serving:
            if deferred:
                leaving.append(version)
            else:
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
            moves.setdefault(left_as, []).append(version.id)
    for status, version_ids in moves.items():
        _move_deployments(session, version_ids, status, now, deprecating=leaving)
        leaving = []


# Each row is written at once by one cached UPDATE (`update_row`), not by a flush.


def _start_step(session: Session, deployment: Deployment | None, share: int, now: datetime) -> None:
    if deployment is None:
        return
    status = DeploymentStatus.PROMOTED if share == 100 else DeploymentStatus.ACTIVE
    if deployment.status == status and deployment.step_started_at == now:
        return  # inserted in this state by the deploy that started it
    update_row(session, deployment, step_started_at=now, status=status, updated_at=now)


def _move_deployments(
    session: Session,
    version_ids: list[uuid.UUID],
    status: DeploymentStatus,
    now: datetime,
    *,
    deprecating: list[ModelVersion],
) -> None:
    # `deprecating`: versions leaving production, written by the same statement (PostgreSQL).
    # The rows written are set on the instances the session holds, as if loaded, as
    # `update_row` does (a later flush does not write them again).
    params: dict[str, Any] = {"ids": version_ids, "status": status.value, "now": now}
    statement = MOVE_DEPLOYMENTS
    if deprecating:
        statement = DEPRECATE_AND_MOVE
        params["deprecated"] = [version.id for version in deprecating]
    for row in execute(session, statement, params):
        held = session.identity_map.get(_deployment_key(row.id))
        if held is not None:
            set_committed_value(held, "status", status.value)
            set_committed_value(held, "updated_at", now)
    for version in deprecating:
        set_committed_value(version, "status", VersionStatus.DEPRECATED)
        set_committed_value(version, "traffic_percent", 0)
        set_committed_value(version, "deprecated_at", now)


def _deployment_of(session: Session, version: ModelVersion) -> Deployment | None:
    found = load_rows(session, Deployment, _DEPLOYMENTS_OF, {"ids": [version.id]})
    return found[0] if found else None


def _deployment_key(deployment_id: uuid.UUID) -> Any:
    return sa_inspect(Deployment).identity_key_from_primary_key((deployment_id,))


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
    does not sum to 100 with every share in 1..100 (traffic outside production, the database's
    check constraint refuses at the write).
    """
    session.flush()
    params = {
        "tenant_id": tenant.id,
        "action": action,
        "version": version,
        "actor": actor,
        "reason": reason,
        "now": now,
    }
    if session.get_bind().dialect.name == "postgresql":
        # One round trip: the generation bumped (and its notification queued), the audit event
        # written with the split it finds, and the versions read back for the check below. All
        # three see the writes before it; a violation raises, and the rollback undoes them.
        params.update(
            split_before=json.dumps(traffic.as_json(before)),
            changed_at=now,
            payload_prefix=f"{tenant.id} ",
        )
        found = execute(session, _AUDITED_CHECK, params).all()
        generation = int(found[0].generation)
        after = _checked_split(tenant, [row for row in found if row.version is not None])
    else:
        # Read back from the database in one query.
        rows = session.execute(_PRODUCTION_SPLIT, {"tenant_id": tenant.id}).all()
        after = _checked_split(tenant, rows)
        # The audit event, written at once (nothing reads it back in this transaction).
        params.update(split_before=traffic.as_json(before), split_after=traffic.as_json(after))
        params["created_at"] = params.pop("now")
        session.execute(_AUDIT_INSERT, params)
        generation = note_change(session, tenant.id)
    # The change feed: routing caches everywhere learn of it when the transaction commits;
    # this process's own Routers at once, after the commit (read your own writes).
    after_commit(session, partial(routing.forget_tenant, tenant.id, generation))
    return Change(tenant.slug, action, version, before, after, reason, actor)


def _checked_split(tenant: Tenant, rows: Sequence[Any]) -> traffic.Split:
    after = {row.version: row.traffic_percent for row in rows}
    if not traffic.is_valid(after):
        raise InvariantViolation(tenant.slug, after)
    return after


# check_and_audit's three statements as one, on PostgreSQL (data-modifying CTEs): the bump is
# change_feed's, the audit row the one `_AUDIT_INSERT` writes, the versions `_PRODUCTION_SPLIT`'s.
# The main query sees every earlier statement of the transaction.
def _audited_check() -> Select[Any]:
    bumped = change_feed.bump("postgresql").cte("bumped")
    notified = select(change_feed.notification(bumped).label("sent")).cte("notified")
    events = cast(Table, TrafficEvent.__table__)
    tenant_id = bindparam("tenant_id", type_=Uuid())
    now = bindparam("now", type_=UTCDateTime())
    split_after = func.jsonb_object_agg(
        sa_cast(_versions.version, String), _versions.traffic_percent
    )
    written = select(
        tenant_id,
        bindparam("action", type_=events.c.action.type),
        bindparam("version", type_=Integer()),
        bindparam("actor", type_=events.c.actor.type),
        bindparam("reason", type_=events.c.reason.type),
        sa_cast(bindparam("split_before", type_=String()), JSONB),
        func.coalesce(split_after, func.jsonb_build_object()),
        now,
    ).where(_versions.tenant_id == tenant_id, in_production(_versions.status))
    columns = ["tenant_id", "action", "version", "actor", "reason", "split_before", "split_after"]
    audit = (
        insert(events)
        .from_select([*columns, "created_at"], written)
        .returning(events.c.id)
        .cte("audit")
    )
    served = cast(Table, ModelVersion.__table__).alias("served")
    serving = and_(served.c.tenant_id == tenant_id, in_production(served.c.status))
    return select(bumped.c.generation, served.c.version, served.c.traffic_percent).select_from(
        bumped.join(notified, true()).join(audit, true()).outerjoin(served, serving)
    )


_AUDITED_CHECK = _audited_check()
