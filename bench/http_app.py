"""The HTTP benchmark's server: ftdeploy's API app as `ftdeploy serve` builds it, plus two
baseline routes behind the same stack (uvicorn, FastAPI, the same key dependency):

- `GET /bench/constant/{tenant}/resolve`: a fixed answer, no routing at all: what the stack
  itself costs per request;
- `GET /bench/seed/{tenant}/resolve`: the seed's `getActiveModel`, one SQL query per request
  (in a worker thread, as a blocking handler runs), then a weighted pick.

Only the benchmark loads it (`uvicorn --factory bench.http_app:create_app`); production never
imports it."""

from __future__ import annotations

import random
from typing import Annotated

from fastapi import FastAPI
from sqlalchemy import text

from registry import keys
from registry.db import session_factory
from registry.models import KeyRole
from registry.routing import subject_number
from worker.http.app import create_app as create_api
from worker.http.auth import authorize
from worker.http.schemas import Resolution

ServeKey = Annotated[keys.Principal, authorize(KeyRole.SERVE)]
SEED_QUERY = text(
    "SELECT v.model_id, v.version, v.traffic_percent FROM ai_model_versions v "
    "JOIN tenants t ON t.id = v.tenant_id "
    "WHERE t.slug = :slug AND v.status = 'production' ORDER BY v.version DESC"
)
CONSTANT = Resolution(tenant="canary", model="ft:constant", version=1, reason="single_version")


def create_app() -> FastAPI:
    app = create_api()
    sessions = session_factory()

    @app.get("/bench/constant/{tenant}/resolve", response_model=Resolution)
    async def constant(tenant: str, principal: ServeKey, subject: str | None = None) -> Resolution:
        return CONSTANT

    @app.get("/bench/seed/{tenant}/resolve", response_model=Resolution)
    def seed(tenant: str, principal: ServeKey, subject: str | None = None) -> Resolution:
        with sessions() as session:
            rows = session.execute(SEED_QUERY, {"slug": tenant}).all()
        if not rows:
            return Resolution(tenant=tenant, model=None, version=None, reason="no_model")
        point = random.random() * 100 if subject is None else subject_number(subject) % 100
        for model_id, version, percent in rows:
            point -= percent
            if point < 0:
                return Resolution(
                    tenant=tenant, model=model_id, version=version, reason="sticky_split"
                )
        model_id, version, _ = rows[0]
        return Resolution(tenant=tenant, model=model_id, version=version, reason="sticky_split")

    return app
