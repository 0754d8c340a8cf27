"""Tenants and their deployment policy."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import clock, validation
from registry.errors import InvalidInput, TenantExists, TenantNotFound
from registry.models import DeploymentPolicy, Metric, Strategy, Tenant

DEFAULT_THRESHOLD = 0.95


def create_tenant(session: Session, slug: str) -> Tenant:
    """Create a tenant with the default policy. Raises InvalidInput, TenantExists. Not idempotent:
    a second call with the same slug raises TenantExists and changes nothing."""
    validation.tenant_slug(slug)
    if session.scalar(select(Tenant.id).where(Tenant.slug == slug)) is not None:
        raise TenantExists(slug)
    tenant = Tenant(slug=slug)
    session.add(tenant)
    session.flush()
    session.add(DeploymentPolicy(tenant_id=tenant.id))
    session.flush()
    return tenant


def find_tenant(session: Session, ref: str | uuid.UUID) -> Tenant:
    """The tenant named by slug or id. Raises TenantNotFound (InvalidInput for a bad slug)."""
    if isinstance(ref, uuid.UUID):
        tenant = session.get(Tenant, ref)
    else:
        tenant_id = validation.as_uuid(ref)
        if tenant_id is not None:
            tenant = session.get(Tenant, tenant_id)
        else:
            validation.tenant_slug(ref)
            tenant = session.scalars(select(Tenant).where(Tenant.slug == ref)).one_or_none()
    if tenant is None:
        raise TenantNotFound(str(ref))
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    """Every tenant, by slug. Reads only."""
    return list(session.scalars(select(Tenant).order_by(Tenant.slug)))


def get_policy(session: Session, tenant_id: uuid.UUID) -> DeploymentPolicy:
    """The tenant's policy. Read only: a tenant created by the host SaaS, not by us, has no row
    yet, and gets the defaults as an object that is not added to the session (the row is created
    by the first change, `set_policy`)."""
    policy = session.get(DeploymentPolicy, tenant_id)
    if policy is None:
        policy = default_policy(tenant_id)
    return policy


def default_policy(tenant_id: uuid.UUID) -> DeploymentPolicy:
    """A policy with every column at its default, not added to any session."""
    values: dict[str, Any] = {}
    for column in DeploymentPolicy.__table__.columns:
        default = column.default
        if default is not None and getattr(default, "is_scalar", False):
            values[column.key] = default.arg
        elif default is not None and getattr(default, "is_callable", False):
            values[column.key] = default.arg(None)
    return DeploymentPolicy(**{**values, "tenant_id": tenant_id})


def _stored_policy(session: Session, tenant_id: uuid.UUID) -> DeploymentPolicy:
    """The tenant's policy row, created with the defaults on the first change."""
    policy = session.get(DeploymentPolicy, tenant_id)
    if policy is None:
        policy = DeploymentPolicy(tenant_id=tenant_id)
        session.add(policy)
        session.flush()
    return policy


@dataclass(frozen=True)
class PolicyChanges:
    """Fields to change in a tenant's policy; None leaves a field as it is."""

    strategy: str | None = None
    canary_percent: int | None = None
    canary_steps: tuple[int, ...] | None = None
    auto_promote: bool | None = None
    auto_promote_threshold: float | None = None
    metric: str | None = None
    min_samples: int | None = None
    bake_seconds: int | None = None
    progress_deadline_seconds: int | None = None
    auto_rollback: bool | None = None
    require_evaluation: bool | None = None
    keep_deprecated: int | None = None

    def given(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


def validate_changes(changes: PolicyChanges) -> None:
    """Raise InvalidInput for the first field out of range; every check runs before any write."""
    if changes.strategy is not None:
        validation.one_of("strategy", changes.strategy, Strategy)
    if changes.canary_percent is not None:
        validation.canary_percent(changes.canary_percent)
    if changes.canary_steps is not None:
        from registry.canary.analysis import parse_steps

        parse_steps(",".join(str(step) for step in changes.canary_steps))
    threshold = changes.auto_promote_threshold
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 <= threshold <= 1
    ):
        raise InvalidInput("threshold", f"{threshold!r} is not a number in 0..1")
    if changes.metric is not None:
        validation.one_of("metric", changes.metric, Metric)
    if changes.min_samples is not None:
        validation.whole_number("min samples", changes.min_samples, 1)
    if changes.bake_seconds is not None:
        validation.whole_number("bake seconds", changes.bake_seconds, 0)
    if changes.progress_deadline_seconds is not None:
        validation.whole_number("deadline seconds", changes.progress_deadline_seconds, 1)
    if changes.keep_deprecated is not None:
        validation.whole_number("keep deprecated", changes.keep_deprecated, 0)


def set_policy(session: Session, tenant_id: uuid.UUID, changes: PolicyChanges) -> DeploymentPolicy:
    """Apply `changes` to the tenant's policy. Validates everything first (InvalidInput, nothing
    written). Idempotent. Deployments already made keep the settings they were made with."""
    validate_changes(changes)
    policy = _stored_policy(session, tenant_id)
    given = changes.given()
    # Checks that need the stored policy run before any field is set, so a refusal leaves the
    # session clean even for a caller that goes on and commits.
    deadline = given.get("progress_deadline_seconds", policy.progress_deadline_seconds)
    bake = given.get("bake_seconds", policy.bake_seconds)
    if deadline <= bake:
        raise InvalidInput("deadline seconds", f"{deadline} must exceed bake seconds ({bake})")
    steps = given.get("canary_steps", policy.canary_steps)
    percent = given.get("canary_percent")
    if percent is not None and steps and percent != min(steps[0], 99):
        # Otherwise the percent would be silently replaced by the first step below.
        raise InvalidInput(
            "canary percent",
            f"{percent} disagrees with the canary steps {list(steps)}: a canary starts at the "
            "first step (change the steps instead)",
        )
    for name, value in given.items():
        if name == "canary_steps":
            from registry.canary.analysis import parse_steps

            # Stored as parsed: validated, and ending at 100 even when given as "10,25".
            value = list(parse_steps(",".join(str(step) for step in value)))
        setattr(policy, name, value)
    if policy.auto_promote and policy.auto_promote_threshold is None:
        policy.auto_promote_threshold = DEFAULT_THRESHOLD
    if policy.canary_steps:
        # The first step is where a canary starts: keep the two in agreement.
        policy.canary_percent = min(policy.canary_steps[0], 99)
    policy.updated_at = clock.now()
    session.flush()
    return policy


def initial_canary_percent(policy: DeploymentPolicy) -> int:
    """Where a new canary starts: the first of the policy's steps, else its canary percent.

    Unlike the seed (`canaryPercent || 10`), a stored value is used as it is; 0 cannot be stored.
    """
    if policy.canary_steps:
        return int(policy.canary_steps[0])
    return policy.canary_percent
