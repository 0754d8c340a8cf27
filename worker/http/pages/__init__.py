"""The operator dashboard: server-rendered pages at `/`, served by the HTTP API's app.

Jinja2 templates (templates/) that display what `registry.views` prepared, a small script and a
style sheet (static/) with no build step, forms that queue the API's own operations. See
`routes` (pages, fragments, actions, the page's change stream), `signin`, `sessions` (cookies,
CSRF, who is looking) and `render` (templates, errors as pages, security headers, the chart).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from registry.settings import Settings
from worker.http.pages import routes, signin
from worker.http.pages.sessions import Sessions, session_secret


def install(app: FastAPI, settings: Settings) -> None:
    """Add the dashboard's routes and static files to the app."""
    app.state.page_sessions = Sessions(session_secret(settings), settings.session_max_age_seconds)
    app.router.routes.extend(routes.router.routes)
    app.router.routes.extend(signin.routes)
    static = StaticFiles(packages=[("worker.http.pages", "static")])
    app.router.routes.append(Mount("/static", app=static, name="static"))
