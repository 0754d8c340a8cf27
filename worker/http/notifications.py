"""Notification endpoints over HTTP, `admin` keys only: the CLI's `ftdeploy notify …` with the
same registry calls (`registry.notify`), the same checks and the same records.

A key scoped to tenants sees and manages only those tenants' endpoints, never a global one;
any other endpoint is reported as one that does not exist (404, the same text). A name is unique
per owner (a tenant, or the global endpoints), so another tenant's endpoint of the same name
neither blocks nor is reached: the routes that take a name take `?tenant=SLUG` or `?global=true`
too, needed only when the key sees more than one endpoint of that name (409 otherwise). The
signing secret is in the answer to the request that made the endpoint, and in no other answer or
log.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Response

from registry import keys
from registry.db import unit_of_work
from registry.models import KeyRole
from registry.notify import endpoints, owners, probe, replay
from registry.settings import get_settings
from worker.http import problems, schemas
from worker.http.auth import authorize

AdminKey = Annotated[keys.Principal, authorize(KeyRole.ADMIN)]
PREFIX = "/v1/notifications/endpoints"

router = APIRouter(tags=["notifications"])
NOT_FOUND = problems.common(404)
REFUSED = problems.common(404, 409)
# A route taking a name: 409 also when more than one endpoint the key sees has it.
NAMED = problems.common(404, 409)


def _owner(
    tenant: Annotated[
        str | None,
        Query(pattern=schemas.TENANT_PATTERN, description="the endpoint of this tenant"),
    ] = None,
    is_global: Annotated[
        bool, Query(alias="global", description="the global endpoint (every tenant's events)")
    ] = False,
) -> owners.Owner:
    """Whose endpoint the name in the path is: needed only when more than one has the name."""
    return owners.owner_of(tenant, is_global)


Owner = Annotated[owners.Owner, Depends(_owner)]


def _location(record: dict[str, Any]) -> str:
    """Where the endpoint is, whoever else has its name."""
    owner = {"tenant": record["tenant"]} if record["tenant"] else {"global": "true"}
    return f"{PREFIX}/{record['name']}?{urlencode(owner)}"


@router.get(PREFIX, response_model=list[schemas.NotificationEndpoint], responses=NOT_FOUND)
def list_endpoints(
    principal: AdminKey,
    tenant: Annotated[
        str | None, Query(pattern=schemas.TENANT_PATTERN, description="those that get its events")
    ] = None,
) -> list[dict[str, Any]]:
    with unit_of_work() as session:
        return endpoints.list_endpoints(session, tenant, visible=principal.tenant_ids)


@router.post(
    PREFIX,
    status_code=201,
    response_model=schemas.NewNotificationEndpoint,
    responses=REFUSED,
    summary="Add an endpoint; its signing secret is in this answer, and only here",
)
def add_endpoint(
    body: schemas.NotificationEndpointIn, principal: AdminKey, response: Response
) -> dict[str, Any]:
    if body.tenant is None and principal.tenant_ids is not None:
        # A global endpoint gets every tenant's events: not for a key that sees only some.
        raise problems.Forbidden("a key scoped to tenants must name the endpoint's tenant")
    with unit_of_work() as session:
        added = endpoints.add_endpoint(
            session,
            body.name,
            body.url,
            tenant_ref=body.tenant,
            events=body.events,
            format=body.format,
            visible=principal.tenant_ids,
        )
        data = endpoints.added_record(session, added)
    response.headers["Location"] = _location(data)
    response.headers["Cache-Control"] = "no-store"  # it holds the secret
    return data


@router.get(PREFIX + "/{name}", response_model=schemas.NotificationEndpoint, responses=NAMED)
def show_endpoint(name: schemas.EndpointName, principal: AdminKey, owner: Owner) -> dict[str, Any]:
    with unit_of_work() as session:
        return endpoints.show_endpoint(session, name, owner=owner, visible=principal.tenant_ids)


@router.delete(PREFIX + "/{name}", response_model=schemas.Removed, responses=NAMED)
def remove_endpoint(
    name: schemas.EndpointName, principal: AdminKey, owner: Owner
) -> dict[str, Any]:
    with unit_of_work() as session:
        endpoints.remove_endpoint(session, name, owner=owner, visible=principal.tenant_ids)
    return {"name": name, "removed": True}


@router.post(
    PREFIX + "/{name}/test",
    response_model=schemas.NotificationTest,
    responses=NAMED,
    summary="Send a test notification now and say how the receiver answered",
)
def send_test(name: schemas.EndpointName, principal: AdminKey, owner: Owner) -> dict[str, Any]:
    settings = get_settings()
    with unit_of_work() as session:
        outgoing = probe.prepare(session, name, owner=owner, visible=principal.tenant_ids)
    # Outside the unit of work: no transaction stays open while the request is in flight.
    return probe.send(
        outgoing, timeout=settings.notify_timeout_seconds, public_url=settings.public_url
    )


@router.get(
    PREFIX + "/{name}/deliveries",
    response_model=list[schemas.NotificationDelivery],
    responses=NAMED,
)
def deliveries(
    name: schemas.EndpointName,
    principal: AdminKey,
    owner: Owner,
    status: Annotated[str | None, Query(pattern="^(pending|delivered|failed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    with unit_of_work() as session:
        return endpoints.deliveries(
            session, name, limit=limit, status=status, owner=owner, visible=principal.tenant_ids
        )


@router.post(
    PREFIX + "/{name}/enable", response_model=schemas.NotificationEndpoint, responses=NAMED
)
def enable_endpoint(
    name: schemas.EndpointName, principal: AdminKey, owner: Owner
) -> dict[str, Any]:
    with unit_of_work() as session:
        endpoint = endpoints.enable_endpoint(
            session, name, owner=owner, visible=principal.tenant_ids
        )
        return endpoints.endpoint_record(session, endpoint)


@router.post(
    PREFIX + "/{name}/disable", response_model=schemas.NotificationEndpoint, responses=NAMED
)
def disable_endpoint(
    name: schemas.EndpointName,
    principal: AdminKey,
    owner: Owner,
    body: schemas.DisableIn | None = None,
) -> dict[str, Any]:
    reason = body.reason if body is not None else None
    with unit_of_work() as session:
        endpoint = endpoints.disable_endpoint(
            session,
            name,
            actor=principal.name,
            reason=reason,
            owner=owner,
            visible=principal.tenant_ids,
        )
        return endpoints.endpoint_record(session, endpoint)


@router.post(
    PREFIX + "/{name}/replay",
    status_code=202,
    response_model=schemas.Replayed,
    responses=REFUSED,
    summary="Queue again what failed, and what was missed while disabled (same webhook-ids)",
)
def replay_endpoint(
    name: schemas.EndpointName,
    principal: AdminKey,
    owner: Owner,
    body: schemas.ReplayIn | None = None,
) -> dict[str, Any]:
    since, event = (body.since, body.event) if body is not None else (None, None)
    with unit_of_work() as session:
        # The worker is asked to deliver after the commit.
        replayed = replay.replay(
            session, name, since=since, event=event, owner=owner, visible=principal.tenant_ids
        )
    return replayed.record()
