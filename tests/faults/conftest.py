"""The fault suite's stack, one per test: a fresh PostgreSQL database with a bystander tenant, a
Redis database as broker (or a Redis server of the test's own), the fake OpenAI, this process's
environment pointed at them, and workers running `tests.faults.fault_app`.

Broker settings are short so that redelivery happens in seconds: visibility timeout 6 s, task
time limit 4 s, longest countdown 2 s, OpenAI client timeout 1.5 s (Settings checks they fit).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from migrations import upgrade
from registry import db as registry_db
from tests import services
from tests.faults.checks import Bystander, check_all, make_bystander
from tests.harness import (
    WorkerProcess,
    fresh_broker_url,
    reset_settings,
    use_env,
    worker_env,
)
from tests.worker.e2e_stack import EventView, Stack
from worker.demo.fake_openai import FakeOpenAI

SETTINGS = {
    "visibility_timeout_seconds": 6,
    "task_time_limit_seconds": 4,
    "job_poll_max_seconds": 2,
    "openai_timeout_seconds": 1.5,
}


@dataclass(kw_only=True)
class FaultStack(Stack):
    """The end-to-end stack, plus a bystander tenant, workers running the fault app, and
    publishing straight to the broker."""

    broker_url: str
    bystander: Bystander

    def worker(
        self,
        name: str = "w1",
        *,
        crash: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> WorkerProcess:
        """Start a worker running the fault app; `crash` maps job ids to crash points."""
        worker_environment = {**self.env, **(env or {})}
        if crash:
            points = ",".join(f"{point}:{job}" for job, point in crash.items())
            worker_environment["FTDEPLOY_FAULT_CRASH"] = points
        process = WorkerProcess(
            worker_environment, self.tmp / f"{name}.log", name=name,
            app="tests.faults.fault_app", **options,
        )  # fmt: skip
        self.workers.append(process)
        return process.start(timeout=60)

    def send(self, job_id: Any, tenant: Any = None, *, task: str = "ftdeploy.job_finished") -> None:
        """Publish straight to the broker, as the pipeline (or anyone) could."""
        from worker.app import app

        kwargs = {} if tenant is None else {"tenant": tenant}
        app.send_task(task, args=(job_id,), kwargs=kwargs)

    def wait_ended(self, jobs: list[str], timeout: float = 60) -> dict[str, EventView]:
        def ended() -> dict[str, EventView]:
            views = {job: self.event(job) for job in jobs}
            # An attempt still in flight (a redelivery of an event that had ended) writes the
            # final outcome when it returns: wait for it too.
            done = {
                j: v
                for j, v in views.items()
                if v is not None and v.state != "received" and not v.in_flight
            }
            return done if len(done) == len(jobs) else {}

        return self.wait(ended, timeout, f"events {jobs} to end")

    def check(self, accepted: Sequence[str] = ()) -> None:
        """The suite's closing checks (tests/faults/checks.py)."""
        check_all(self.database_url, accepted=accepted, bystander=self.bystander)


@pytest.fixture
def stack(
    pg_url: str, redis_service: services.Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultStack]:
    yield from _stack(pg_url, redis_service.url, tmp_path, monkeypatch)


@pytest.fixture
def own_redis() -> Iterator[services.Service]:
    """A Redis server for this test alone (to restart it), persistence on as in production."""
    with services.start_redis(appendonly=True) as server:
        yield server


@pytest.fixture
def own_postgres() -> Iterator[services.Service]:
    """A PostgreSQL server for this test alone (to stop it), migrated."""
    if os.environ.get(services.POSTGRES_URL_ENV):
        pytest.skip("an external PostgreSQL cannot be stopped")
    with services.start_postgres() as server:
        upgrade(server.url)
        yield server
        _dispose(server.url)


@pytest.fixture
def stack_on_own_postgres(
    own_postgres: services.Service,
    redis_service: services.Service,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[FaultStack]:
    yield from _stack(own_postgres.url, redis_service.url, tmp_path, monkeypatch)


def _dispose(url: str) -> None:
    bind = registry_db.session_factory(url).kw.get("bind")
    if bind is not None:
        bind.dispose()
    registry_db._session_factory.cache_clear()


@pytest.fixture
def stack_on_own_redis(
    pg_url: str, own_redis: services.Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultStack]:
    yield from _stack(pg_url, own_redis.url, tmp_path, monkeypatch)


def _stack(
    pg_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultStack]:
    broker_url = fresh_broker_url(redis_url)
    with FakeOpenAI() as fake:
        env = worker_env(
            database_url=pg_url,
            broker_url=broker_url,
            openai_base_url=fake.base_url,
            data_dir=tmp_path / "data",
            **SETTINGS,
        )
        use_env(env, monkeypatch)
        stack = FaultStack(
            env=env,
            fake=fake,
            database_url=pg_url,
            broker_url=broker_url,
            tmp=tmp_path,
            bystander=make_bystander(pg_url),
        )
        try:
            yield stack
        finally:
            for worker in stack.workers:
                worker.stop()
    monkeypatch.undo()
    reset_settings()
