"""Whose endpoint a name means. A notification endpoint's name is unique per owner: among one
tenant's endpoints, and among the global ones (tenant NULL, every tenant's events). A caller
names the owner (a tenant, or GLOBAL), or none: then the one endpoint of that name it sees, and
a refusal when it sees more than one. Endpoints it may not see (`Visible`) are never found,
counted, nor told of."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Collection, Sequence
from typing import Literal

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from registry.errors import InvalidInput, TenantNotFound
from registry.models import Tenant
from registry.notify.errors import EndpointAmbiguous, EndpointNotFound
from registry.notify.models import NotificationEndpoint
from registry.tenants import find_tenant

# The tenant ids a caller may see; None: every tenant, and the global endpoints.
Visible = Collection[uuid.UUID] | None


class _Global(enum.Enum):
    OWNER = "global"


# The owner of the global endpoints (tenant NULL, every tenant's events), named apart from any
# tenant (a tenant may be called "global").
GLOBAL = _Global.OWNER
# Whose endpoint a name means: a tenant (slug or id), GLOBAL, or None (whichever the caller sees).
Owner = str | uuid.UUID | Literal[_Global.OWNER] | None


def owner_of(tenant: str | None, is_global: bool) -> Owner:
    """The owner a door's `tenant` and `global` options name. Raises InvalidInput for both."""
    if tenant is not None and is_global:
        raise InvalidInput("tenant", "name a tenant or ask for the global endpoint, not both")
    return GLOBAL if is_global else tenant


def find_endpoint(
    session: Session,
    name: str,
    *,
    owner: Owner = None,
    visible: Visible = None,
    lock: bool = False,
) -> NotificationEndpoint:
    """The endpoint named `name` of `owner` (a tenant, GLOBAL, or None: the one of that name the
    caller sees), read afresh (`lock`: and locked until the transaction ends).

    Raises EndpointNotFound, also for one outside `visible` (the same message: a caller never
    learns the names of endpoints it may not see); TenantNotFound for an owner that does not
    exist or is outside `visible`; EndpointAmbiguous when no owner is given and the caller sees
    more than one endpoint of that name (it names only those owners)."""
    query = select(NotificationEndpoint).where(NotificationEndpoint.name == name)
    if owner is GLOBAL:
        query = query.where(NotificationEndpoint.tenant_id.is_(None))
    elif owner is not None:
        tenant = find_tenant(session, owner)
        if visible is not None and tenant.id not in visible:
            raise TenantNotFound(str(owner))
        query = query.where(NotificationEndpoint.tenant_id == tenant.id)
    if visible is not None:  # never a global one, nor another tenant's
        query = query.where(NotificationEndpoint.tenant_id.in_(list(visible)))
    # In one order: two callers locking the same rows never wait for each other crosswise.
    query = query.order_by(NotificationEndpoint.tenant_id).execution_options(populate_existing=True)
    found = list(session.scalars(query.with_for_update() if lock else query))
    if not found:
        raise EndpointNotFound(name)
    if len(found) > 1:
        slugs = tenant_slugs(session, found)
        owners = sorted(
            (slugs.get(e.tenant_id) if e.tenant_id else None for e in found),
            key=lambda slug: (slug is not None, slug or ""),
        )
        raise EndpointAmbiguous(name, owners)
    return found[0]


def tenant_slugs(session: Session, found: Sequence[NotificationEndpoint]) -> dict[uuid.UUID, str]:
    """The slugs of these endpoints' tenants, by id."""
    ids = {e.tenant_id for e in found if e.tenant_id}
    if not ids:
        return {}
    return dict(session.execute(select(Tenant.id, Tenant.slug).where(Tenant.id.in_(ids))).all())


def sees(visible: Visible, endpoint: NotificationEndpoint) -> bool:
    """Whether a caller who sees the tenants `visible` (None: every tenant) sees the endpoint.
    A global endpoint gets every tenant's events: only a caller who sees all of them sees it."""
    if visible is None:
        return True
    return endpoint.tenant_id is not None and endpoint.tenant_id in visible


def owned_by(tenant_id: uuid.UUID | None) -> ColumnElement[bool]:
    """The endpoints of one owner: the tenant, or the global ones (None)."""
    if tenant_id is None:
        return NotificationEndpoint.tenant_id.is_(None)
    return NotificationEndpoint.tenant_id == tenant_id
