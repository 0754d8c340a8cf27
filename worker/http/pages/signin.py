"""Signing in and out: the only pages served without a key (routes of their own, public).

Sign-in takes an API key (`read` at least) in a form carrying a token bound to a short-lived
nonce cookie (no sign-in CSRF), verifies it as the API does, and sets the session cookie (see
`sessions`). The key itself is never stored, logged or put in the cookie.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from registry import keys
from registry.models import KeyRole
from worker.http.auth import principal_of, stored_key
from worker.http.pages import render
from worker.http.pages.sessions import (
    COOKIE,
    SIGN_IN_COOKIE,
    SIGN_IN_MAX_AGE,
    session_viewer,
    sessions_of,
)
from worker.http.problems import Unauthorized


def _next(value: object) -> str:
    """Where to go after signing in: a path of this site only (never `//host` or a URL)."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return "/"
    if "\\" in value or any(ord(c) < 32 for c in value):
        return "/"
    return value


def _form(request: Request, status: int = 200, error: str | None = None) -> Response:
    nonce_cookie, token = sessions_of(request).sign_in_nonce()
    response = render.page(
        "sign_in.html",
        status,
        token=token,
        next=_next(request.query_params.get("next")),
        error=error,
        viewer=None,
        csrf=None,
    )
    response.set_cookie(
        SIGN_IN_COOKIE,
        nonce_cookie,
        max_age=SIGN_IN_MAX_AGE,
        path="/sign-in",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return render.secure(response)


async def sign_in_form(request: Request) -> Response:
    return _form(request)


async def sign_in(request: Request) -> Response:
    form = await request.form()
    sessions = sessions_of(request)
    token = form.get("csrf")
    if not sessions.sign_in_token_ok(
        request.cookies.get(SIGN_IN_COOKIE), token if isinstance(token, str) else ""
    ):
        return _form(request, 403, "The form expired: try again.")
    presented = form.get("key")
    presented = presented.strip() if isinstance(presented, str) else ""
    try:
        principal = await principal_of(request, presented)
    except Unauthorized as refused:
        return _form(request, 401, f"Not signed in: {refused.detail}.")
    if not principal.allows(KeyRole.READ):
        return _form(request, 403, f"A {principal.role} key cannot read the dashboard.")
    key_id = keys.split_key(presented)
    stored = await stored_key(request, key_id) if key_id else None
    if stored is None:  # verified a moment ago; gone since
        return _form(request, 401, "Not signed in: the API key is unknown or revoked.")
    target = _next(form.get("next"))
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        sessions.issue(key_id or "", stored),
        max_age=sessions.max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/sign-in")
    return render.secure(response)


async def sign_out(request: Request) -> Response:
    form = await request.form()
    session = await session_viewer(request)
    token = form.get("csrf")
    if session is not None and token != session.csrf:
        return render.secure(render.error_page(request, 403, "The form's CSRF token is wrong."))
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return render.secure(response)


routes = [
    Route("/sign-in", sign_in_form, methods=["GET"]),
    Route("/sign-in", sign_in, methods=["POST"]),
    Route("/sign-out", sign_out, methods=["POST"]),
]
