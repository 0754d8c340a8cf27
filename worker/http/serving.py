"""Serving endpoints: which model a request should use, the split as a document, its changes as
a stream, and the same answer as an OpenFeature (OFREP) flag. A `serve` key is enough.

Answers come from the process's routing cache (`registry.routing`'s default Router): no query per
request. A snapshot due for a refresh is re-read in a worker thread, never on the event loop.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from registry import keys
from registry.errors import InvalidInput, TenantNotFound
from registry.models import KeyRole, Tenant
from registry.routing import Router, Snapshot
from registry.validation import as_uuid
from worker.http import documents, problems, schemas
from worker.http.auth import authorize
from worker.http.changes import Announcer
from worker.http.schemas import (
    OfrepFailure,
    OfrepNotFound,
    OfrepRequest,
    OfrepSuccess,
    Resolution,
    RoutingDocument,
)

ServeKey = Annotated[keys.Principal, authorize(KeyRole.SERVE)]
MEMO_LIMIT = 100_000
router = APIRouter(tags=["serving"])


class Serving:
    """The routing cache as the HTTP door sees it: snapshots by tenant name, slugs by id."""

    def __init__(self, routes: Router, sessions: sessionmaker[Session]) -> None:
        self.router = routes
        self._sessions = sessions
        self._last: dict[str, Snapshot] = {}
        self._slugs: dict[uuid.UUID, str] = {}
        self._lock = threading.Lock()

    async def snapshot(self, principal: keys.Principal, name: str) -> Snapshot:
        """The tenant's snapshot, if the key may see the tenant (else TenantNotFound)."""
        last = self._last.get(name)
        if last is not None and time.monotonic() < last.expires:
            snapshot = self.router.snapshot(name)  # fresh in the Router: no read
        else:
            snapshot = await run_in_threadpool(self.router.snapshot, name)
            with self._lock:
                if len(self._last) >= MEMO_LIMIT:
                    self._last.clear()
                self._last[name] = snapshot
        if not principal.sees(snapshot.tenant_id):
            raise TenantNotFound(name)
        return snapshot

    async def slug(self, name: str, tenant_id: uuid.UUID) -> str:
        if as_uuid(name) is None:
            return name
        slug = self._slugs.get(tenant_id)
        if slug is None:
            slug = await run_in_threadpool(self._read_slug, tenant_id)
        return slug

    def _read_slug(self, tenant_id: uuid.UUID) -> str:
        with self._sessions() as session:
            slug = session.scalar(select(Tenant.slug).where(Tenant.id == tenant_id))
        if slug is None:
            raise TenantNotFound(str(tenant_id))
        with self._lock:
            if len(self._slugs) >= MEMO_LIMIT:
                self._slugs.clear()
            self._slugs[tenant_id] = slug
        return slug


def _serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


def _version_of(snapshot: Snapshot, model: str) -> int:
    return snapshot.versions[snapshot.model_ids.index(model)]


@router.get(
    "/v1/tenants/{tenant}/resolve",
    response_model=Resolution,
    responses=problems.common(404),
    summary="The model a request should use",
)
async def resolve(
    request: Request,
    tenant: schemas.TenantRef,
    principal: ServeKey,
    subject: Annotated[
        str | None,
        Query(max_length=400, description="user or session key: the choice is sticky per key"),
    ] = None,
) -> Resolution:
    serving = _serving(request)
    snapshot = await serving.snapshot(principal, tenant)
    slug = await serving.slug(tenant, snapshot.tenant_id)
    model = snapshot.pick(subject)
    if model is None:
        return Resolution(tenant=slug, model=None, version=None, reason="no_model")
    if snapshot.only is not None:
        reason = "single_version"
    else:
        reason = "sticky_split" if subject is not None else "weighted_random"
    return Resolution(tenant=slug, model=model, version=_version_of(snapshot, model), reason=reason)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/v1/tenants/{tenant}/routing",
    response_model=None,
    responses={
        200: {"model": RoutingDocument, "description": "The split, with its ETag"},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        **problems.common(404),
    },
    summary="The tenant's split, to evaluate locally",
)
async def routing(request: Request, tenant: schemas.TenantRef, principal: ServeKey) -> Response:
    serving = _serving(request)
    snapshot = await serving.snapshot(principal, tenant)
    slug = await serving.slug(tenant, snapshot.tenant_id)
    document = documents.for_snapshot(snapshot, slug)
    etag = str(document["etag"])
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(document, headers=headers)


@router.get(
    "/v1/stream",
    response_class=EventSourceResponse,
    responses=problems.common(),
    summary="Server-sent events: `routing` when a visible tenant's split changes, `resync` when "
    "changes may have been missed",
)
async def stream(request: Request, principal: ServeKey) -> AsyncIterable[ServerSentEvent]:
    announcer: Announcer = request.app.state.announcer
    heartbeat: float = request.app.state.settings.stream_heartbeat_seconds
    changes = await announcer.open(principal.sees)
    try:
        yield ServerSentEvent(comment="connected")
        while True:
            changed = await changes.next(heartbeat)
            if changed is None:
                yield ServerSentEvent(comment="heartbeat")
            elif changed.resync:
                yield ServerSentEvent(event="resync", data={})
            else:
                for tenant_id, etag in sorted(changed.etags.items()):
                    data = {"tenant": str(tenant_id), "etag": etag}
                    yield ServerSentEvent(event="routing", data=data)
    finally:
        changes.close()


def _ofrep(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


@router.post(
    "/ofrep/v1/evaluate/flags/{key}",
    response_model=None,
    tags=["openfeature"],
    summary="OFREP single flag evaluation: the flag key is the tenant, the value its model id",
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": OfrepRequest.model_json_schema()}}
        }
    },
    responses={
        **problems.common(),
        200: {"model": OfrepSuccess, "description": "The model id for this context"},
        400: {"model": OfrepFailure, "description": "Bad evaluation request"},
        404: {"model": OfrepNotFound, "description": "No such flag, or nothing live for it"},
    },
)
async def evaluate_flag(request: Request, key: str, principal: ServeKey) -> JSONResponse:
    body = await request.body()
    try:
        parsed = OfrepRequest.model_validate_json(body or b"{}")
    except ValidationError as error:
        code = "PARSE_ERROR" if _is_json_error(error) else "INVALID_CONTEXT"
        return _ofrep(400, {"key": key, "errorCode": code, "errorDetails": _first(error)})
    context = parsed.context or {}
    subject = context.get("targetingKey")
    if subject is not None and (not isinstance(subject, str) or len(subject) > 400):
        details = "targetingKey must be a string of at most 400 characters"
        return _ofrep(400, {"key": key, "errorCode": "INVALID_CONTEXT", "errorDetails": details})
    try:
        snapshot = await _serving(request).snapshot(principal, key)
        slug = await _serving(request).slug(key, snapshot.tenant_id)
    except (TenantNotFound, InvalidInput):
        details = f"flag not found: {key!r}"
        return _ofrep(404, {"key": key, "errorCode": "FLAG_NOT_FOUND", "errorDetails": details})
    model = snapshot.pick(subject)
    if model is None:
        details = f"tenant {slug!r} has no version in production: use your default"
        return _ofrep(404, {"key": key, "errorCode": "FLAG_NOT_FOUND", "errorDetails": details})
    version = _version_of(snapshot, model)
    share = snapshot.shares[snapshot.versions.index(version)]
    success = OfrepSuccess(
        key=key,
        value=model,
        variant=f"v{version}",
        reason="STATIC" if snapshot.only is not None else "SPLIT",
        metadata={"tenant": slug, "version": version, "traffic_percent": share},
    )
    return _ofrep(200, success.model_dump())


def _is_json_error(error: ValidationError) -> bool:
    return any(item.get("type") == "json_invalid" for item in error.errors())


def _first(error: ValidationError) -> str:
    item = error.errors()[0]
    where = ".".join(str(part) for part in item.get("loc", ())) or "body"
    return f"{where}: {item.get('msg', 'invalid')}"
