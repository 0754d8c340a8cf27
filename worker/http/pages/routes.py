"""The dashboard's pages and fragments: the fleet at `/`, a tenant at `/tenants/{tenant}`, the
live fragments the page script re-reads when the change stream says so, previews, and the
actions, which queue the same operations as the CLI and the API (`operators._queue`: the same
registry call, the key's name as actor), and pause/resume of auto-promotion (the registry calls
of `ftdeploy tenant pause|resume`). Each handler reads through `registry.views` and only
renders what it returns.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import HTMLResponse

from registry import clock, validation
from registry.db import session_factory, unit_of_work
from registry.errors import FtdeployError, InvalidInput, OperationNotFound
from registry.models import KeyRole, OperationKind, Tenant
from registry.tenants import pause_tenant, resume_tenant
from registry.versions import current_split
from registry.views import fleet, preview, tenant
from registry.views.splits import shares
from worker.http import schemas
from worker.http.auth import visible_tenant
from worker.http.changes import Announcer
from worker.http.operators import _queue as queue_operation  # the API's own door
from worker.http.pages import render
from worker.http.pages.sessions import Viewer, viewer
from worker.http.serving import Serving

Reader = Annotated[Viewer, viewer(KeyRole.READ)]
Operator = Annotated[Viewer, viewer(KeyRole.OPERATE)]
ACTIONS = ("promote", "rollback", "switch")

router = APIRouter(route_class=render.PageRoute, include_in_schema=False)


@contextmanager
def read_only() -> Iterator[Session]:
    """A session whose transaction is always rolled back (previews rely on it)."""
    session = session_factory()()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@contextmanager
def reading() -> Iterator[Session]:
    """A session for pages that only read: its transaction ends with a commit, which writes
    nothing and, unlike a rollback, keeps the statements psycopg prepared on the connection (it
    forgets them at every rollback, and each page would then plan its statements anew, a few
    milliseconds of the fleet page's). On PostgreSQL the transaction is READ ONLY as well, so
    that commit cannot keep a write made by mistake. Rolled back on an error."""
    session = session_factory()()
    try:
        # Set on the connection before its transaction begins; SQLite ignores the option.
        session.connection(execution_options={"postgresql_readonly": True})
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _common(who: Viewer) -> dict[str, Any]:
    return {"viewer": who, "csrf": who.csrf}


# -- the fleet -------------------------------------------------------------------------------


def _fleet(who: Viewer, attention: bool) -> dict[str, Any]:
    with reading() as session:
        data = fleet.fleet(session, who.principal.tenant_ids, clock.now())
    rows = data.attention if attention else data.rows
    return {"fleet": data, "rows": rows, "attention": attention, **_common(who)}


@router.get("/", response_class=HTMLResponse)
def fleet_page(who: Reader, attention: bool = False) -> HTMLResponse:
    return render.page("fleet.html", **_fleet(who, attention))


@router.get("/fragments/fleet", response_class=HTMLResponse)
def fleet_fragment(who: Reader, attention: bool = False) -> HTMLResponse:
    return render.page("_fleet_table.html", **_fleet(who, attention))


# -- a tenant --------------------------------------------------------------------------------


def _tenant(session: Session, who: Viewer, ref: str) -> Tenant:
    return visible_tenant(session, who.principal, ref)


def _live(session: Session, found: Tenant) -> dict[str, Any]:
    data = tenant.tenant_page(session, found, clock.now())
    return {
        "page": data,
        "columns": render.chart(data.chart),
        "legend": render.legend(data.chart),
        "chart_width": render.CHART_WIDTH,
        "chart_height": render.CHART_HEIGHT,
    }


def _number(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _preview(session: Session, found: Tenant, params: Mapping[str, Any]) -> preview.Preview | None:
    action = params.get("action")
    if action not in ACTIONS:
        return None
    version, percent = _number(params.get("version")), _number(params.get("percent"))
    if action == "promote" and (percent is None or not 1 <= percent <= 100):
        before = shares(current_split(session, found.id))
        return preview.Preview(before, None, "the percent must be a whole number in 1..100")
    return preview.preview(session, found.id, str(action), version, percent or 100)


@router.get("/tenants/{tenant_ref}", response_class=HTMLResponse)
def tenant_page(
    request: Request, tenant_ref: schemas.TenantRef, who: Reader, op: str | None = None
) -> HTMLResponse:
    # A preview's changes are rolled back; a viewer who cannot operate sees none.
    with read_only() if who.can_operate else reading() as session:
        found = _tenant(session, who, tenant_ref)
        context = _live(session, found)
        shown = _preview(session, found, request.query_params) if who.can_operate else None
        operation = _operation(session, found, op) if op else None
    return render.page(
        "tenant.html",
        preview=shown,
        asked=dict(request.query_params),
        operation=operation,
        **context,
        **_common(who),
    )


@router.get("/tenants/{tenant_ref}/fragments/live", response_class=HTMLResponse)
def tenant_fragment(
    tenant_ref: schemas.TenantRef,
    who: Reader,
    part: Literal["summary", "details"] | None = None,
) -> HTMLResponse:
    """The live parts of the tenant page: the split and the canary (summary), the rest
    (details), or both."""
    with reading() as session:
        context = _live(session, _tenant(session, who, tenant_ref))
    return render.page("_tenant_live.html", part=part, **context, **_common(who))


@router.get("/tenants/{tenant_ref}/preview", response_class=HTMLResponse)
def preview_fragment(request: Request, tenant_ref: schemas.TenantRef, who: Reader) -> HTMLResponse:
    with read_only() as session:
        found = _tenant(session, who, tenant_ref)
        shown = _preview(session, found, request.query_params)
    return render.page("_preview.html", preview=shown)


def _operation(session: Session, found: Tenant, operation_id: str) -> tenant.OperationRow:
    try:
        key = uuid.UUID(operation_id)
    except ValueError:
        raise OperationNotFound(operation_id) from None
    row = tenant.operation(session, found, key)
    if row is None:
        raise OperationNotFound(operation_id)
    return row


@router.get("/tenants/{tenant_ref}/operations/{operation_id}", response_class=HTMLResponse)
def operation_fragment(
    tenant_ref: schemas.TenantRef, operation_id: schemas.OperationId, who: Reader
) -> HTMLResponse:
    with read_only() as session:
        found = _tenant(session, who, tenant_ref)
        row, slug = _operation(session, found, operation_id), found.slug
    return render.page("_operation.html", operation=row, tenant=slug)


# -- actions ---------------------------------------------------------------------------------


def _reason(form: FormData) -> str:
    reason = validation.reason(form.get("reason"))
    if reason is None:
        raise InvalidInput("reason", "say why: the reason is kept in the audit trail")
    return reason


def _act(who: Viewer, ref: str, action: str, form: FormData) -> Response:
    # The tenant first: a tenant the key may not see is absent, whatever the form holds.
    with unit_of_work() as session:
        slug = _tenant(session, who, ref).slug
    if action == "rollback":
        queued = queue_operation(
            who.principal, slug, OperationKind.ROLLBACK, Response(), reason=_reason(form)
        )
    else:
        version = validation.version_number(form.get("version"))
        percent = (
            100 if action == "switch" else validation.traffic_percent(_number(form.get("percent")))
        )
        queued = queue_operation(
            who.principal,
            slug,
            OperationKind.PROMOTE,
            Response(),
            version=version,
            traffic_percent=percent,
            reason=_reason(form),
        )
    target = f"/tenants/{slug}?op={queued['operation_id']}#operation"
    return RedirectResponse(target, status_code=303)


async def _form(request: Request) -> FormData:
    return await request.form()


@router.post("/tenants/{tenant_ref}/promote")
async def promote(request: Request, tenant_ref: schemas.TenantRef, who: Operator) -> Response:
    return await run_in_threadpool(_act, who, tenant_ref, "promote", await _form(request))


@router.post("/tenants/{tenant_ref}/rollback")
async def rollback(request: Request, tenant_ref: schemas.TenantRef, who: Operator) -> Response:
    return await run_in_threadpool(_act, who, tenant_ref, "rollback", await _form(request))


@router.post("/tenants/{tenant_ref}/switch")
async def switch(request: Request, tenant_ref: schemas.TenantRef, who: Operator) -> Response:
    return await run_in_threadpool(_act, who, tenant_ref, "switch", await _form(request))


@router.post("/tenants/{tenant_ref}/pause")
async def pause(request: Request, tenant_ref: schemas.TenantRef, who: Operator) -> Response:
    return await run_in_threadpool(_hold, who, tenant_ref, True, await _form(request))


@router.post("/tenants/{tenant_ref}/resume")
async def resume(request: Request, tenant_ref: schemas.TenantRef, who: Operator) -> Response:
    return await run_in_threadpool(_hold, who, tenant_ref, False, await _form(request))


def _hold(who: Viewer, ref: str, paused: bool, form: FormData) -> Response:
    """Pause or resume the tenant's auto-promotion: the registry call `ftdeploy tenant
    pause|resume` makes, in one unit of work, with the key's name as the actor. Not queued: it
    changes no traffic, only whether the sweep acts (and it is idempotent)."""
    with unit_of_work() as session:
        # The tenant first: a tenant the key may not see is absent, whatever the form holds.
        found = _tenant(session, who, ref)
        change = pause_tenant if paused else resume_tenant
        change(session, found.id, actor=who.principal.name, reason=_reason(form))
        slug = found.slug
    return RedirectResponse(f"/tenants/{slug}#live", status_code=303)


# -- live ------------------------------------------------------------------------------------


@router.get("/dashboard/stream", response_class=EventSourceResponse)
async def stream(request: Request, who: Reader) -> AsyncIterable[ServerSentEvent]:
    """A `change` event naming each visible tenant whose split changed: the page re-reads its
    fragments. The session's cookie is enough (EventSource sends no headers of its own)."""
    serving: Serving = request.app.state.serving
    announcer: Announcer = request.app.state.announcer
    heartbeat: float = request.app.state.settings.stream_heartbeat_seconds
    changes = await announcer.open(who.principal.sees)
    try:
        # Subscribed: every change from now on has its event; the page re-reads what it shows.
        yield ServerSentEvent(event="ready", data={}, retry=2000)
        while True:
            changed = await changes.next(heartbeat)
            if changed is None:
                yield ServerSentEvent(comment="heartbeat")
                continue
            if changed.resync:  # changes may have been missed: the page re-reads everything
                yield ServerSentEvent(event="ready", data={})
                continue
            for tenant_id in sorted(changed.etags):
                try:
                    slug = await serving.slug(str(tenant_id), tenant_id)
                except FtdeployError:
                    continue  # the tenant is gone
                yield ServerSentEvent(event="change", data={"tenant": slug})
    finally:
        changes.close()
