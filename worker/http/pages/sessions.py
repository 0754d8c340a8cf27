"""Who is looking at a page: a signed-in session (cookie) or an API key in a header.

Signing in with an API key (`read` at least) sets `ftd_session`, a cookie signed with the
server's session secret (`FTDEPLOY_SESSION_SECRET`, else a random one kept in the data
directory), HttpOnly, SameSite=Strict, Secure when the request came over HTTPS. It holds the
key's id (not secret), a fingerprint of the key's stored hash and a random session nonce — never
the key. Every request re-reads the key through the API's key cache, so a revoked key's sessions
end within `FTDEPLOY_API_KEY_CACHE_SECONDS`, as its API calls do.

Every form carries a CSRF token: an HMAC of the session nonce (synchronizer token bound to the
session); the sign-in form's is bound to a short-lived nonce cookie of its own. A request
authenticated by an `Authorization`/`X-API-Key` header needs none: browsers never send those by
themselves.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from registry import keys
from registry.models import KeyRole
from registry.settings import Settings
from worker.http.auth import ROLE_MARK, principal_of, stored_key
from worker.http.problems import Forbidden, Unauthorized

COOKIE = "ftd_session"
SIGN_IN_COOKIE = "ftd_sign_in"
SIGN_IN_MAX_AGE = 3600
SECRET_FILE = "session_secret"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SignInNeeded(Exception):
    """No session and no key: the page sends the browser to the sign-in form."""


def session_secret(settings: Settings) -> bytes:
    """The configured secret, else the one kept in the data directory (made once, mode 0600)."""
    configured = settings.session_secret.get_secret_value() if settings.session_secret else ""
    if configured.strip():
        return configured.strip().encode()
    path = Path(settings.data_dir) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another server process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48))
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise RuntimeError(f"the session secret in {path} is too short; delete it to renew")
    return secret.encode()


@dataclass(frozen=True)
class Viewer:
    """The principal behind a page request, with its form token (None: signed in by header)."""

    principal: keys.Principal
    csrf: str | None

    @property
    def can_operate(self) -> bool:
        return self.principal.allows(KeyRole.OPERATE)


class Sessions:
    """Issues and reads session cookies and their CSRF tokens."""

    def __init__(self, secret: bytes, max_age: int) -> None:
        self._secret = secret
        self.max_age = max_age
        self._cookies = URLSafeTimedSerializer(secret, salt="ftdeploy.session")

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def issue(self, key_id: str, stored: keys.StoredKey) -> str:
        fingerprint = self._mac("key", stored.key_hash)[:32]
        return self._cookies.dumps({"k": key_id, "f": fingerprint, "n": secrets.token_hex(16)})

    def read(self, cookie: str) -> dict[str, str] | None:
        try:
            data = self._cookies.loads(cookie, max_age=self.max_age)
        except BadSignature:  # also an expired one (SignatureExpired)
            return None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in "kfn"):
            return None
        return data

    def matches(self, data: dict[str, str], stored: keys.StoredKey) -> bool:
        return hmac.compare_digest(data["f"], self._mac("key", stored.key_hash)[:32])

    def csrf(self, nonce: str) -> str:
        return self._mac("csrf", nonce)

    def sign_in_nonce(self) -> tuple[str, str]:
        """A nonce for the sign-in form's cookie, and the form's token for it."""
        nonce = secrets.token_hex(16)
        return self._cookies.dumps(nonce, salt="ftdeploy.sign-in"), self._mac("sign-in", nonce)

    def sign_in_token_ok(self, cookie: str | None, token: str) -> bool:
        if not cookie or not token:
            return False
        try:
            nonce = self._cookies.loads(cookie, salt="ftdeploy.sign-in", max_age=SIGN_IN_MAX_AGE)
        except BadSignature:
            return False
        return isinstance(nonce, str) and hmac.compare_digest(token, self._mac("sign-in", nonce))


def sessions_of(request: Request) -> Sessions:
    found: Sessions = request.app.state.page_sessions
    return found


def _presented(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("x-api-key", "").strip() or None


async def session_viewer(request: Request) -> Viewer | None:
    """The viewer of the request's session cookie, or None (no cookie, or no longer valid)."""
    sessions = sessions_of(request)
    data = sessions.read(request.cookies.get(COOKIE, ""))
    if data is None:
        return None
    stored = await stored_key(request, data["k"])
    if stored is None or stored.revoked or not sessions.matches(data, stored):
        return None
    return Viewer(stored.principal, sessions.csrf(data["n"]))


async def form_token(request: Request) -> str:
    if request.method not in UNSAFE:
        return ""
    header = request.headers.get("x-csrf-token")
    if header:
        return header
    form = await request.form()
    value = form.get("csrf")
    return value if isinstance(value, str) else ""


def viewer(role: KeyRole) -> Any:
    """The dependency of a page that needs `role`: the session's viewer (its CSRF token checked
    on every unsafe request) or a header key's. SignInNeeded when there is neither."""

    async def dependency(request: Request) -> Viewer:
        presented = _presented(request)
        if presented is not None:
            found = Viewer(await principal_of(request, presented), None)
        else:
            session = await session_viewer(request)
            if session is None:
                raise SignInNeeded()
            token = await form_token(request)
            if request.method in UNSAFE and not (
                session.csrf and token and hmac.compare_digest(token, session.csrf)
            ):
                raise Forbidden("the form's CSRF token is missing or wrong: reload the page")
            found = session
        if not found.principal.allows(role):
            article = "an" if role.value[0] in "aeiou" else "a"
            raise Forbidden(
                f"this needs {article} {role.value} key; yours is {found.principal.role}"
            )
        return found

    setattr(dependency, ROLE_MARK, role)
    return Depends(dependency)


__all__ = ["SignInNeeded", "Unauthorized", "Viewer", "session_secret", "viewer"]
