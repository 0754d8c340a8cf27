"""Database URLs as operators write them, made into the one form SQLAlchemy and psycopg read.

- `postgres://` and `postgresql://` (what hosting providers print) mean PostgreSQL through
  psycopg 3: `postgresql+psycopg://`. An explicit `postgresql+driver://` is kept as written.
- A password with an unencoded `@` (or `/`, `:`, `?`, `#`) is common; a naive parser splits at
  the first `@` and then tries to resolve the password's tail as a host name, which puts that
  tail in the driver's error message. Here the credentials end at the last `@` (one in the query
  string aside), and are percent-encoded again when the URL is rebuilt. Percent-escapes already
  in the credentials are decoded first, so an encoded password comes out the same.
- A URL that cannot be read raises `ValueError` with a message that never contains the URL.

`password_of` gives the password (decoded) for masking; it never raises.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url

PSYCOPG = "postgresql+psycopg"
_ALIASES = {"postgres": PSYCOPG, "postgresql": PSYCOPG}
# Credentials that hold "@host/db?key=" went past the host: that `@` was in the query string.
_HOLDS_LOCATION = re.compile(r"@[^/@]+/[^?]*\?[^=&]+=")
_EXPECTED = "expected postgresql://user:password@host:5432/database or sqlite:///path"


def normalize(raw: str) -> str:
    """The URL in canonical form (see the module docstring). Raises ValueError (no value)."""
    text = raw.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme:
        raise ValueError(f"not a database URL ({_EXPECTED})")
    lowered = scheme.lower()
    if lowered.startswith("sqlite"):
        return text
    if not lowered.startswith("postgres"):
        raise ValueError(f"unsupported database {scheme[:20]!r} ({_EXPECTED})")
    driver = _ALIASES.get(lowered, lowered)
    userinfo, location = _split_credentials(rest)
    try:
        parsed = make_url(f"{driver}://{location}")
    except Exception:  # sqlalchemy's ArgumentError/ValueError repeat the URL
        raise ValueError(f"the host, port or database part cannot be read ({_EXPECTED})") from None
    username = password = None
    if userinfo is not None:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    try:
        url = URL.create(
            driver,
            username=username,
            password=password,
            host=parsed.host,
            port=parsed.port,
            database=parsed.database,
            query=parsed.query,
        )
    except Exception:
        raise ValueError(f"the URL cannot be read ({_EXPECTED})") from None
    return url.render_as_string(hide_password=False)


def _split_credentials(rest: str) -> tuple[str | None, str]:
    """(userinfo or None, host/path/query): split at the last `@`, unless what precedes it
    holds a whole location (`@host/db?key=`): that `@` was in the query string."""
    position = len(rest)
    while True:
        position = rest.rfind("@", 0, position)
        if position < 0:
            return None, rest
        if not _HOLDS_LOCATION.search(rest[:position]):
            return rest[:position], rest[position + 1 :]


def password_of(url: str | None) -> str | None:
    """The URL's password, decoded, or None. Never raises (used while masking)."""
    if not url or "://" not in url:
        return None
    rest = url.strip().partition("://")[2]
    userinfo, _ = _split_credentials(rest)
    if userinfo is None or ":" not in userinfo:
        return None
    return unquote(userinfo.partition(":")[2]) or None


def raw_password_of(url: str | None) -> str | None:
    """The password exactly as written in the URL (maybe percent-encoded), or None."""
    if not url or "://" not in url:
        return None
    userinfo, _ = _split_credentials(url.strip().partition("://")[2])
    if userinfo is None or ":" not in userinfo:
        return None
    return userinfo.partition(":")[2] or None


def masked(url: str) -> str:
    """The URL with its password replaced by `***` (for display)."""
    rest = url.partition("://")[2]
    userinfo, location = _split_credentials(rest)
    if userinfo is None or ":" not in userinfo:
        return url
    scheme = url.partition("://")[0]
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{location}"
