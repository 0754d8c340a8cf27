"""Which version an outcome is for: (tenant, model id or version number) → (tenant id, version
id), looked up once and cached for the process, as every door that records outcomes needs it."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.canary.counters import Ids
from registry.errors import FtdeployError, InvalidInput, TenantNotFound
from registry.models import ModelVersion
from registry.tenants import find_tenant

# An unknown (tenant, model) is remembered this long, so a flood of them does not query each time.
MISS_TTL_SECONDS = 5.0


class VersionResolver:
    """(tenant, model id or version) → (tenant id, version id), cached for the process.

    A version's model id and number never change, so a hit never goes stale. A miss (unknown
    tenant or model) is remembered for MISS_TTL_SECONDS, then asked again: a version registered
    in the meantime is found. A miss keeps what its refusal needs to be built again, not the
    exception (raising one object again and again grows its traceback each time). Thread-safe
    (single dict operations under the GIL).
    """

    def __init__(self, limit: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._hits: dict[tuple[str, str | int], Ids] = {}
        self._misses: dict[tuple[str, str | int], tuple[float, Callable[[], FtdeployError]]] = {}
        self._limit = limit
        self._clock = clock

    def cached(self, tenant: str, model: str | int) -> Ids | None:
        """The cached ids; raises the cached refusal of a recent miss."""
        hit = self._hits.get((tenant, model))
        if hit is not None:
            return hit
        miss = self._misses.get((tenant, model))
        if miss is not None and miss[0] > self._clock():
            raise miss[1]()
        return None

    def load(self, session: Session, tenant: str, model: str | int) -> Ids:
        """Look the version up; raises TenantNotFound, InvalidInput("model", ...)."""
        key = (tenant, model)
        try:
            ids = self._query(session, tenant, model)
        except FtdeployError as error:
            if len(self._misses) >= self._limit:
                self._misses.clear()
            self._misses[key] = (self._clock() + MISS_TTL_SECONDS, _rebuilder(error))
            raise
        if len(self._hits) >= self._limit:
            self._hits.clear()
        self._hits[key] = ids
        self._misses.pop(key, None)
        return ids

    def resolve(self, session: Session, tenant: str, model: str | int) -> Ids:
        return self.cached(tenant, model) or self.load(session, tenant, model)

    @staticmethod
    def _query(session: Session, tenant_ref: str, model: str | int) -> Ids:
        tenant = find_tenant(session, tenant_ref)
        query = select(ModelVersion.id).where(ModelVersion.tenant_id == tenant.id)
        if isinstance(model, int):
            query = query.where(ModelVersion.version == model)
        else:
            # Each run's model id is unique; if a model were registered twice, the newest wins.
            query = query.where(ModelVersion.model_id == model)
        version_id = session.scalar(query.order_by(ModelVersion.version.desc()).limit(1))
        if version_id is None:
            shown = f"v{model}" if isinstance(model, int) else repr(model)
            raise InvalidInput("model", f"tenant {tenant.slug!r} has no version {shown}")
        return tenant.id, version_id


@lru_cache(maxsize=4)
def resolver_for(database_url: str) -> VersionResolver:
    """The process's resolver for one database, shared by the doors that store outcomes (the
    task, the HTTP API): per database, since the cached ids mean nothing in another one."""
    return VersionResolver()


def _rebuilder(error: FtdeployError) -> Callable[[], FtdeployError]:
    """A function that makes a fresh refusal like `error` (no traceback, no context kept)."""
    if isinstance(error, TenantNotFound):
        tenant = error.tenant
        return lambda: TenantNotFound(tenant)
    if isinstance(error, InvalidInput):
        name, problem = error.field, error.problem
        return lambda: InvalidInput(name, problem)
    message = str(error)
    return lambda: FtdeployError(message)
