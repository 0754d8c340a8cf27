"""Tenants and their deployment policy."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from registry import audit_events, clock, validation
from registry.db import LOCKED_POLICIES_KEY, lock_tenant, lock_tenant_by_slug
from registry.errors import InvalidInput, TenantExists, TenantNotFound
from registry.models import DeploymentPolicy, Metric, Strategy, Tenant
from registry.rows import attach_rows, load_rows

DEFAULT_THRESHOLD = 0.95


def create_tenant(session: Session, slug: str, *, actor: str = "operator") -> Tenant:
    """Create a tenant with the default policy, recorded in the audit trail. Raises InvalidInput,
    TenantExists. Not idempotent: a second call with the same slug raises TenantExists and
    changes nothing."""
    validation.tenant_slug(slug)
    if session.scalar(select(Tenant.id).where(Tenant.slug == slug)) is not None:
        raise TenantExists(slug)
    tenant = Tenant(slug=slug)
    session.add(tenant)
    session.flush()
    session.add(DeploymentPolicy(tenant_id=tenant.id))
    session.flush()
    audit_events.record_audit_event(session, tenant.id, audit_events.TENANT_ADDED, actor=actor)
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


def lock_named_tenant(session: Session, ref: str | uuid.UUID) -> Tenant:
    """`find_tenant`, then `lock_tenant`, in one statement. Raises what `find_tenant` raises."""
    tenant_id = ref if isinstance(ref, uuid.UUID) else validation.as_uuid(ref)
    if tenant_id is not None:
        try:
            return lock_tenant(session, tenant_id)
        except TenantNotFound:
            raise TenantNotFound(str(ref)) from None
    validation.tenant_slug(str(ref))
    tenant = lock_tenant_by_slug(session, str(ref))
    if tenant is None:
        raise TenantNotFound(str(ref))
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    """Every tenant, by slug. Reads only."""
    return list(session.scalars(select(Tenant).order_by(Tenant.slug)))


def get_policy(session: Session, tenant_id: uuid.UUID) -> DeploymentPolicy:
    """The tenant's policy. Read only: a tenant created by the host SaaS, not by us, has no row
    yet, and gets the defaults as an object that is not added to the session (the row is created
    by the first change, `set_policy`). A policy read under the tenant's lock earlier in this
    transaction (`policy_read_under_lock`) is not read again."""
    held: DeploymentPolicy | None = session.info.get(LOCKED_POLICIES_KEY, {}).get(tenant_id)
    if held is not None:
        return held
    found = load_rows(session, DeploymentPolicy, _POLICY_OF, {"tenant_id": tenant_id})
    return found[0] if found else default_policy(tenant_id)


def policy_read_under_lock(
    session: Session, tenant_id: uuid.UUID, row: Mapping[str, Any] | None
) -> None:
    """The tenant's policy row (None: it has none), read by a statement of this transaction
    that ran after the tenant's lock was taken: `get_policy` returns it until the lock ends.
    Changes through the ORM (`set_policy`) change the same instance."""
    found = attach_rows(session, DeploymentPolicy, [row]) if row is not None else []
    policy = found[0] if found else default_policy(tenant_id)
    session.info.setdefault(LOCKED_POLICIES_KEY, {})[tenant_id] = policy


_POLICY_OF = select(DeploymentPolicy.__table__).where(
    DeploymentPolicy.__table__.c.tenant_id == bindparam("tenant_id")
)


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
    session.info.get(LOCKED_POLICIES_KEY, {}).pop(tenant_id, None)  # read again from now on
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
        from registry.canary.checks import parse_steps

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


# The policy's fields an operator changes (what the audit trail compares before and after).
AUDITED_FIELDS = tuple(f.name for f in fields(PolicyChanges))


def set_policy(
    session: Session,
    tenant_id: uuid.UUID,
    changes: PolicyChanges,
    *,
    actor: str = "operator",
    reason: str | None = None,
) -> DeploymentPolicy:
    """Apply `changes` to the tenant's policy. Validates everything first (InvalidInput, nothing
    written). Idempotent. Deployments already made keep the settings they were made with.

    The fields that changed (also those that follow from others, such as the canary percent
    from the steps) are written to the audit trail with their values before and after, in the
    caller's transaction, with `actor` and `reason`; a call that changes nothing writes nothing."""
    validate_changes(changes)
    reason = validation.reason(reason)
    policy = _stored_policy(session, tenant_id)
    before = {name: _plain(getattr(policy, name)) for name in AUDITED_FIELDS}
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
            from registry.canary.checks import parse_steps

            # Stored as parsed: validated, and ending at 100 even when given as "10,25".
            value = list(parse_steps(",".join(str(step) for step in value)))
        setattr(policy, name, value)
    if policy.auto_promote and policy.auto_promote_threshold is None:
        policy.auto_promote_threshold = DEFAULT_THRESHOLD
    if policy.canary_steps:
        # The first step is where a canary starts: keep the two in agreement.
        policy.canary_percent = min(policy.canary_steps[0], 99)
    changed = {
        name: {"before": before[name], "after": _plain(getattr(policy, name))}
        for name in AUDITED_FIELDS
        if _plain(getattr(policy, name)) != before[name]
    }
    if changed:
        policy.updated_at = clock.now()
        audit_events.record_audit_event(
            session,
            tenant_id,
            audit_events.POLICY_CHANGED,
            actor=actor,
            reason=reason,
            changes=changed,
        )
    session.flush()
    return policy


def _plain(value: Any) -> Any:
    """A policy value as JSON keeps it (steps as a list, enums as their strings)."""
    if isinstance(value, list | tuple):
        return [int(step) for step in value]
    if isinstance(value, str):
        return str(value)
    return value


def pause_tenant(
    session: Session, tenant_ref: str | uuid.UUID, *, actor: str, reason: str | None
) -> tuple[Tenant, DeploymentPolicy]:
    """Hold the tenant's auto-promotion: the sweep leaves its canaries where they are (no step,
    no promotion, no automatic rollback) until `resume_tenant`. Traffic does not change.

    Locks the tenant. Idempotent: pausing a paused tenant keeps the first pause (and its reason)
    and writes nothing. Raises TenantNotFound, InvalidInput (reason)."""
    reason = validation.reason(reason)
    tenant = find_tenant(session, tenant_ref)
    lock_tenant(session, tenant.id)
    policy = _stored_policy(session, tenant.id)
    session.refresh(policy)  # read under the lock
    if not policy.paused:
        policy.paused = True
        policy.paused_reason = reason
        policy.updated_at = clock.now()
        audit_events.record_audit_event(
            session, tenant.id, audit_events.PAUSED, actor=actor, reason=reason
        )
        session.flush()
        from registry.notify import notices  # notices reads versions, which reads tenants

        notices.tenant_paused(session, tenant.id, actor, reason or "")
    return tenant, policy


def resume_tenant(
    session: Session, tenant_ref: str | uuid.UUID, *, actor: str, reason: str | None = None
) -> tuple[Tenant, DeploymentPolicy]:
    """Let the sweep act on the tenant's canaries again. Locks the tenant. Idempotent: resuming
    a tenant that is not paused writes nothing. Raises TenantNotFound, InvalidInput (reason)."""
    reason = validation.reason(reason)
    tenant = find_tenant(session, tenant_ref)
    lock_tenant(session, tenant.id)
    # Read under the lock; a tenant without a policy row was never paused.
    policy = session.get(DeploymentPolicy, tenant.id, populate_existing=True)
    if policy is None:
        return tenant, default_policy(tenant.id)
    if policy.paused:
        policy.paused = False
        policy.paused_reason = None
        policy.updated_at = clock.now()
        audit_events.record_audit_event(
            session, tenant.id, audit_events.RESUMED, actor=actor, reason=reason
        )
        session.flush()
        from registry.notify import notices  # notices reads versions, which reads tenants

        notices.tenant_resumed(session, tenant.id, actor, reason or "")
    return tenant, policy


def initial_canary_percent(policy: DeploymentPolicy) -> int:
    """Where a new canary starts: the first of the policy's steps, else its canary percent.

    Unlike the seed (`canaryPercent || 10`), a stored value is used as it is; 0 cannot be stored.
    """
    if policy.canary_steps:
        return int(policy.canary_steps[0])
    return policy.canary_percent
