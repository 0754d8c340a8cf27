"""End-to-end fixtures: fake OpenAI, a Redis database per test, the worker's environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import services
from tests.harness import fresh_broker_url, worker_env
from tests.worker.cli_support import cli_db  # noqa: F401  (a fixture for every CLI test)
from worker.fake_openai import FakeOpenAI


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def broker_url(redis_service: services.Service) -> str:
    return fresh_broker_url(redis_service.url)


@pytest.fixture
def e2e_env(
    pg_url: str, broker_url: str, fake_openai: FakeOpenAI, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """The worker's environment, also applied to this test process (the CLI and the task
    senders read the same settings)."""
    env = worker_env(
        database_url=pg_url, broker_url=broker_url, openai_base_url=fake_openai.base_url,
        data_dir=tmp_path / "data",
    )
    for key, value in env.items():
        if key.startswith(("FTDEPLOY_", "OPENAI_")):
            monkeypatch.setenv(key, value)
    _reset_settings()
    yield env
    _reset_settings()


def _reset_settings() -> None:
    """Settings and the Celery app are read once per process: make them see this test's env."""
    from registry.settings import get_settings
    from worker import app as app_module

    get_settings.cache_clear()
    fresh = app_module.make_app()
    app_module.app.conf.update(
        broker_url=fresh.conf.broker_url,
        broker_transport_options=fresh.conf.broker_transport_options,
    )
    # Drop cached connections to the previous test's broker; new ones use the new URL.
    app_module.app._pool = None
    app_module.app.amqp._producer_pool = None
