"""Notification tests: an encryption key for endpoint secrets (never the data directory's)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from registry.settings import get_settings


@pytest.fixture(autouse=True)
def notify_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FTDEPLOY_NOTIFY_ENCRYPTION_KEY", "test-key-not-a-secret")
    monkeypatch.setenv("FTDEPLOY_NOTIFY_RETRY_SCHEDULE_SECONDS", "5,300,1800")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
