"""Who is calling: the API key of a request, verified, as a dependency every route declares.

`Authorization: Bearer ftd_…` (or `X-API-Key: ftd_…`, as OpenFeature's OFREP providers send it).
No key, a malformed, unknown or revoked one: 401. A role below the route's: 403. A tenant the key
may not see is reported exactly as a tenant that does not exist (404), in paths and in lists.

Keys are verified against a per-process cache of their rows, re-read after
`FTDEPLOY_API_KEY_CACHE_SECONDS` (so a revocation takes effect within it), so a request costs a
hash and a dictionary look-up, not a query. The key itself is never logged or stored in clear.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from registry import keys
from registry.errors import TenantNotFound
from registry.models import KeyRole, Tenant
from registry.tenants import find_tenant
from worker.http.problems import Forbidden, Unauthorized

CACHE_LIMIT = 10_000
ROLE_MARK = "ftdeploy_role"  # set on each authorization dependency: the route-walk test reads it

_bearer = HTTPBearer(auto_error=False, description="An ftdeploy API key: `ftd_…`")
_api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The same key, as OFREP providers send it"
)


class KeyCache:
    """Key rows by key id, each kept `ttl` seconds (misses too, so a flood of unknown ids costs
    one query per id per ttl). Thread-safe; bounded."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._clock = clock
        self._rows: dict[str, tuple[float, keys.StoredKey | None]] = {}
        self._lock = threading.Lock()

    def cached(self, key_id: str) -> tuple[bool, keys.StoredKey | None]:
        entry = self._rows.get(key_id)
        if entry is None or self._clock() >= entry[0]:
            return False, None
        return True, entry[1]

    def load(self, key_id: str) -> keys.StoredKey | None:
        expires = self._clock() + self._ttl
        with self._sessions() as session:
            stored = keys.load_key(session, key_id)
        with self._lock:
            if len(self._rows) >= CACHE_LIMIT:
                self._rows.clear()
            self._rows[key_id] = (expires, stored)
        return stored


def _presented(bearer: HTTPAuthorizationCredentials | None, header: str | None) -> str:
    presented = bearer.credentials if bearer is not None else header
    if not presented:
        raise Unauthorized("no API key: send `Authorization: Bearer ftd_…`")
    return presented.strip()


async def stored_key(request: Request, key_id: str) -> keys.StoredKey | None:
    """The key row with this key id, from the process's cache (read when due)."""
    cache: KeyCache = request.app.state.keys
    hit, stored = cache.cached(key_id)
    if not hit:
        stored = await run_in_threadpool(cache.load, key_id)
    return stored


async def principal_of(request: Request, presented: str) -> keys.Principal:
    """The verified principal of a presented key; Unauthorized when it is not a valid key."""
    key_id = keys.split_key(presented)
    if key_id is None:
        raise Unauthorized("the API key is not an ftdeploy key (ftd_…)")
    principal = keys.verify(presented, await stored_key(request, key_id))
    if principal is None:
        raise Unauthorized("the API key is unknown or revoked")
    return principal


def authorize(role: KeyRole) -> Any:
    """The dependency of a route that needs `role` (or a higher one); it yields the Principal."""

    async def dependency(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        header: Annotated[str | None, Security(_api_key)],
    ) -> keys.Principal:
        principal = await principal_of(request, _presented(bearer, header))
        if not principal.allows(role):
            raise Forbidden(f"this endpoint needs a {role.value} key; this one is {principal.role}")
        return principal

    setattr(dependency, ROLE_MARK, role)
    return Depends(dependency)


def visible_tenant(session: Session, principal: keys.Principal, ref: str) -> Tenant:
    """The tenant named `ref`, if the key may see it; TenantNotFound otherwise, with the same
    message as for a tenant that does not exist."""
    tenant = find_tenant(session, ref)
    if not principal.sees(tenant.id):
        raise TenantNotFound(str(ref))
    return tenant


def check_visible(principal: keys.Principal, tenant_id: uuid.UUID, ref: str) -> None:
    if not principal.sees(tenant_id):
        raise TenantNotFound(str(ref))
