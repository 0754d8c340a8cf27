"""One function, `mask`, for every text that came from outside and is about to be stored or logged.

External errors quote what they were given: an HTTP library repeats an illegal header (the API
key in `Bearer …`), a database driver the host it could not resolve (the tail of a password with
an unencoded `@`), a client library its URL. `mask` replaces, in any text:

- the configured secrets: OPENAI_API_KEY, FTDEPLOY_WEBHOOK_SECRET (and its base64 key), and the
  passwords of FTDEPLOY_DATABASE_URL and FTDEPLOY_BROKER_URL, each as written, decoded,
  percent-encoded and as Python's repr would escape it;
- what looks like a secret whatever its source: `sk-…` keys, `whsec_…` secrets, the value after
  `Bearer ` or `Basic `, the password in `scheme://user:password@`, and the masked echo of a key
  OpenAI sends back (`sk-abc***wxyz`, already harmless, kept as `***`).

It never raises (a text is masked with the patterns alone if the settings cannot be read) and
is cheap enough for every log line: the secret forms are computed once per settings object.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

from registry import dburl

if TYPE_CHECKING:
    from registry.settings import Settings

MASK = "***"
MIN_SECRET = 6  # a shorter "secret" would mask ordinary words

# (cheap substring test on the lowered text, pattern, replacement): a pattern only runs when its
# marker is present, so an ordinary line costs a few `in` tests.
_PATTERNS: tuple[tuple[tuple[str, ...], re.Pattern[str], str], ...] = (
    (
        ("://",),
        # scheme://user:password@ (the password may itself hold `@`: up to the last `@` of the
        # word). The lookbehind anchors the scheme: without it each letter of a word is tried.
        re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s]*@"),
        r"\1" + MASK + "@",
    ),
    (
        ("bearer", "basic", "token"),
        re.compile(r"\b(Bearer|Basic|Token)(\s+|%20|\+)[^\s'\",;)]+", re.IGNORECASE),
        r"\1 " + MASK,
    ),
    (("sk-",), re.compile(r"\bsk-[A-Za-z0-9_*\-]{4,}"), MASK),
    (("whsec_",), re.compile(r"\bwhsec_[A-Za-z0-9+/=_\-]+"), MASK),
    (
        ("key", "pass", "secret"),
        re.compile(r"(?i)\b(api[_-]?key|password|passwd|secret)(\s*[=:]\s*)[^\s&'\",;]+"),
        r"\1\2" + MASK,
    ),
)

# (the settings object, its secret forms): a strong reference, so an id is never reused.
_cache: tuple[object, tuple[str, ...]] | None = None


def secret_forms(secrets: Iterable[str | None]) -> tuple[str, ...]:
    """Each secret as written, decoded, percent-encoded and repr-escaped; longest first."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret or len(secret) < MIN_SECRET:
            continue
        for form in (secret, secret.strip(), quote(secret, safe=""), quote_plus(secret)):
            forms.add(form)
            forms.add(repr(form)[1:-1])  # "\n" written as backslash-n, as in a bytes repr
    return tuple(sorted((f for f in forms if len(f) >= MIN_SECRET), key=len, reverse=True))


def configured_secrets(settings: Settings) -> tuple[str, ...]:
    """The forms of every secret in `settings` (see `secret_forms`)."""
    values: list[str | None] = [settings.openai_api_key_value]
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
        values += [secret, secret.removeprefix("whsec_")]
    for url in (settings.database_url, settings.broker_url):
        text = url.get_secret_value() if url is not None else None
        values += [dburl.password_of(text), dburl.raw_password_of(text)]
    return secret_forms(values)


def _current_secrets() -> tuple[str, ...]:
    global _cache
    try:
        from registry.settings import get_settings

        settings = get_settings()
    except Exception:  # unreadable settings: the patterns still apply
        return ()
    cached = _cache
    if cached is not None and cached[0] is settings:
        return cached[1]
    forms = configured_secrets(settings)
    _cache = (settings, forms)
    return forms


def mask(text: object, extra: Iterable[str | None] = ()) -> str:
    """`text` (made a string) with every secret form and secret-shaped word replaced by ***:
    the configured secrets, those in `extra` (a client's own key, say), and the patterns."""
    result = text if isinstance(text, str) else str(text)
    forms = _current_secrets()
    if extra:
        forms = tuple(sorted({*forms, *secret_forms(extra)}, key=len, reverse=True))
    for form in forms:
        if form in result:
            result = result.replace(form, MASK)
    lowered = result.lower()
    for markers, pattern, replacement in _PATTERNS:
        if any(marker in lowered for marker in markers):
            result = pattern.sub(replacement, result)
    return result
