"""The HTTP API's ASGI app (`create_app`) and its server (`serve`, uvicorn).

One app: the serving and operator endpoints (FastAPI: OpenAPI at /openapi.json, docs at /docs),
and the webhook receiver's routes (`worker.web`: /webhooks/openai, /healthz, /metrics). Without a
webhook secret the API still starts, without the webhook route, and says so once at start; a
secret that is set but malformed refuses the start, as `ftdeploy webhooks serve` does.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from registry.db import session_factory
from registry.routing import change_feed, default_router
from registry.settings import Settings, get_settings
from worker import web
from worker.http import notifications, operators, outcomes, pages, problems, serving
from worker.http.auth import KeyCache
from worker.http.changes import Announcer
from worker.logs import event

log = logging.getLogger("ftdeploy.http")

DESCRIPTION = """Which model each request of a tenant should use, the tenant's split as a document
and as a stream of changes, outcome batches, an OpenFeature (OFREP) flag per tenant; and the
operators' view and actions. Every endpoint takes an API key (`Authorization: Bearer ftd_…`,
made by `ftdeploy keys create`); errors are RFC 9457 problem documents."""


def webhook_configured(settings: Settings) -> bool:
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    return bool(secret.strip())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Started: what the process holds now (modules, the app and its routes, SQLAlchemy's
    metadata, ~200,000 objects) lives as long as the server, so it is frozen out of the cyclic
    garbage collector. Otherwise every full collection walks all of it again, and a page of
    thousands of rows (the fleet) sets one off every few requests: ~100 ms each, measured.
    Stopped: unfrozen, so a process that builds apps one after another (tests) can free them."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API. Raises InvalidInput when a webhook secret is set but malformed."""
    settings = settings or get_settings()
    app = FastAPI(
        title="ftdeploy",
        version="1",
        description=DESCRIPTION,
        max_body_size=settings.api_max_body_bytes,
        lifespan=lifespan,
    )
    problems.install(app)
    sessions = session_factory()
    app.state.settings = settings
    app.state.keys = KeyCache(sessions, settings.api_key_cache_seconds)
    router = default_router()  # subscribes to the change feed: it hears of changes first
    app.state.serving = serving.Serving(router, sessions)
    # The change stream, from the same feed (the Router's; without one, the process's).
    app.state.announcer = Announcer(router, lambda: router.feed or change_feed())
    # The routes themselves, not included routers: `app.routes` lists every APIRoute, which the
    # route-walk tests read (authorization on each, a tenant-isolation case for each).
    for module in (serving, outcomes, operators, notifications):
        app.router.routes.extend(module.router.routes)
    pages.install(app, settings)  # the dashboard at /
    webhook = webhook_configured(settings)
    for route in web.routes(settings, webhook=webhook):
        app.router.routes.append(route)
    if not webhook:
        event(
            log,
            "http.webhook_off",
            logging.WARNING,
            route=web.WEBHOOK_PATH,
            reason="FTDEPLOY_WEBHOOK_SECRET is not set",
        )
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> int:
    """Run the API (see `worker.receiver_server.run`: slow clients bounded, schema checked).

    uvicorn's access log has the method, path and status, never a header: keys are not logged.
    Refuses to start, with InvalidInput, when a webhook secret is set but malformed."""
    from worker import receiver_server

    settings = get_settings()
    if webhook_configured(settings):
        web.require_secret(settings)
    return receiver_server.run("worker.http.app:create_app", settings, host, port, workers)
