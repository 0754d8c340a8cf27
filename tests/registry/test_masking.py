"""Secrets in every form they take in a message: masked wherever external text is stored."""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy.orm import Session

from registry.errors import UpstreamTransient
from registry.jobs.events import accept_event, find_event, finish_event
from registry.jobs.openai_jobs import fetch_job, make_client
from registry.masking import mask
from registry.models import EventState
from registry.settings import get_settings
from worker.demo.fake_openai import FakeOpenAI

API_KEY = "Zq81-local-gateway-key-77aa"  # not sk-shaped: only the configured value can catch it
WEBHOOK_SECRET = "whsec_bWFza2luZy10ZXN0LXNlY3JldC0xMjM0NQ=="
PASSWORD = "db-p@ss w/rd:42"


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith(("FTDEPLOY_", "OPENAI_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY + "\n")
    monkeypatch.setenv("FTDEPLOY_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("FTDEPLOY_DATABASE_URL", f"postgres://app:{PASSWORD}@db.example/app")
    monkeypatch.setenv("FTDEPLOY_BROKER_URL", "redis://:broker-secret-99@redis.example:6379/0")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("secrets_env")
def test_mask_covers_secrets_in_every_form() -> None:
    forms = [
        API_KEY,
        f"b'Bearer {API_KEY}\\n'",  # httpx's "Illegal header value" quotes the header's repr
        WEBHOOK_SECRET,
        WEBHOOK_SECRET.removeprefix("whsec_"),
        PASSWORD,
        quote(PASSWORD, safe=""),
        quote_plus(PASSWORD),
        "broker-secret-99",
    ]
    for form in forms:
        masked = mask(f"failed: {form} (again {form})")
        assert "***" in masked
        for secret in (API_KEY, "bWFza2luZy", "p@ss", "p%40ss", "broker-secret"):
            assert secret not in masked, (form, masked)
    # Generic shapes, whatever their source.
    generic = {
        "key sk-proj-AbCdEf0123456789 refused": "sk-proj-AbCdEf",
        "secret whsec_QUJDREVGR0hJSktMTU5PUA== bad": "QUJDREVG",
        "header Authorization: Bearer eyJhbGciOi.payload.sig": "eyJhbGciOi",
        "connect postgresql://user:pa@ss@host:5432/db failed": "pa@ss",
        "redis://default:s3cr3t@cache:6379/0 down": "s3cr3t",
        "echo sk-abc*****************wxyz": "wxyz",
        "password=letmein&user=x": "letmein",
    }
    for text, secret in generic.items():
        assert secret not in mask(text), text
    # Ordinary text is left alone.
    plain = "job ftjob-abc failed: HTTP 404 (not_found): no such job"
    assert mask(plain) == plain


@pytest.mark.usefixtures("secrets_env")
def test_api_key_with_a_newline_is_stripped_and_never_quoted() -> None:
    """The worker builds its client from the settings, which strip the key; a client given the
    raw value strips it too; an error that still quotes a key (one broken inside) is masked."""
    settings = get_settings()
    assert settings.openai_api_key_value == API_KEY
    with FakeOpenAI() as fake:
        fake.add_job("ftjob-newline")
        with make_client(api_key=API_KEY + "\n", base_url=fake.base_url, timeout=2.0) as sdk:
            assert fetch_job(sdk, "ftjob-newline").status == "succeeded"
        broken = API_KEY[:8] + "\n" + API_KEY[8:]  # cannot be stripped
        with (
            make_client(api_key=broken, base_url=fake.base_url, timeout=2.0) as sdk,
            pytest.raises(UpstreamTransient) as caught,
        ):
            fetch_job(sdk, "ftjob-newline")
    assert "Illegal header value" in str(caught.value)
    assert API_KEY[8:] not in str(caught.value) and API_KEY[:8] not in str(caught.value)


@pytest.mark.usefixtures("secrets_env")
def test_event_reasons_are_stored_masked(session: Session) -> None:
    accept_event(session, "ftjob-masked", None, source="cli")
    reason = (
        f"internal error: OperationalError: connection to postgres://app:{PASSWORD}@db failed; "
        f"LocalProtocolError: Illegal header value b'Bearer {API_KEY}\\n'"
    )
    finish_event(session, "ftjob-masked", EventState.FAILED, reason)
    session.flush()
    stored = find_event(session, "ftjob-masked")
    assert stored is not None and stored.outcome is not None
    assert "internal error: OperationalError" in stored.outcome
    for secret in (API_KEY, "p@ss", "w/rd"):
        assert secret not in stored.outcome
