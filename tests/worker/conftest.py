"""End-to-end fixtures: fake OpenAI, a Redis database per test, the worker's environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import services
from tests.harness import fresh_broker_url, reset_settings, use_env, worker_env
from tests.worker.cli_support import broker_down, cli_db  # noqa: F401  (fixtures for CLI tests)
from worker.demo.fake_openai import FakeOpenAI


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def broker_url(redis_service: services.Service) -> str:
    return fresh_broker_url(redis_service.url)


@pytest.fixture
def e2e_env(
    pg_url: str,
    broker_url: str,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """The worker's environment, also applied to this test process (the CLI and the task
    senders read the same settings)."""
    env = worker_env(
        database_url=pg_url,
        broker_url=broker_url,
        openai_base_url=fake_openai.base_url,
        data_dir=tmp_path / "data",
    )
    use_env(env, monkeypatch)
    yield env
    reset_settings()
