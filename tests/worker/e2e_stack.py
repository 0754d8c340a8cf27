"""A module-scoped end-to-end stack: a fresh PostgreSQL database, a Redis database as broker, the
fake OpenAI, this process's environment pointed at them (the CLI and task senders read it), and
helpers that read the outcome back from the database.

One stack (and its worker) serves every test of a module; tests keep apart by using their own
tenants and job ids, so a worker start is paid once per module rather than once per test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select

from registry import db as registry_db
from registry.db import unit_of_work
from registry.models import (
    Deployment,
    FinetuningRun,
    JobEvent,
    ModelVersion,
    Operation,
    Tenant,
    TrafficEvent,
    VersionStatus,
)
from tests import services
from tests.conftest import fresh_postgres_url
from tests.harness import (
    WorkerProcess,
    fresh_broker_url,
    reset_settings,
    use_env,
    wait_for,
    worker_env,
)
from worker.demo.fake_openai import FakeOpenAI

_T = TypeVar("_T")


@dataclass(frozen=True)
class EventView:
    state: str
    outcome: str | None
    attempts: int
    crashes: int
    in_flight: bool


@dataclass
class Stack:
    env: dict[str, str]
    fake: FakeOpenAI
    database_url: str
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    # -- processes ------------------------------------------------------------------------------
    def start_worker(self, name: str = "w1", **options: Any) -> WorkerProcess:
        worker = WorkerProcess(self.env, self.tmp / f"{name}.log", name=name, **options)
        self.workers.append(worker)
        return worker.start(timeout=60)

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.log()}" for w in self.workers)

    def wait(self, condition: Callable[[], _T], timeout: float, what: str) -> _T:
        """`condition()` once truthy; on timeout an AssertionError naming `what`, with the logs."""
        try:
            return wait_for(condition, timeout, f"timed out after {timeout:g}s: {what}")  # type: ignore[no-any-return]
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None

    # -- reading the outcome --------------------------------------------------------------------
    def event(self, job_id: str) -> EventView | None:
        with unit_of_work(self.database_url) as session:
            row = session.scalars(
                select(JobEvent).where(JobEvent.openai_job_id == job_id)
            ).one_or_none()
            if row is None:
                return None
            return EventView(
                row.state, row.outcome, row.attempts, row.crashes, row.in_flight_since is not None
            )

    def wait_event_ended(self, job_id: str, timeout: float = 30) -> EventView:
        def ended() -> EventView | None:
            view = self.event(job_id)
            # An attempt still in flight (a redelivery) writes the final outcome when it returns.
            ended = view is not None and view.state != "received" and not view.in_flight
            return view if ended else None

        return self.wait(ended, timeout, f"the event of {job_id} to end")

    def split(self, tenant: str) -> dict[int, int]:
        """The tenant's production versions and their traffic."""
        return {
            v: t for v, status, t in self.versions(tenant) if status == VersionStatus.PRODUCTION
        }

    def versions(self, tenant: str) -> list[tuple[int, str, int]]:
        with unit_of_work(self.database_url) as session:
            rows = session.execute(
                select(ModelVersion.version, ModelVersion.status, ModelVersion.traffic_percent)
                .join(Tenant, Tenant.id == ModelVersion.tenant_id)
                .where(Tenant.slug == tenant)
                .order_by(ModelVersion.version)
            )
            return [(v, s, t) for v, s, t in rows]

    def run(self, job_id: str) -> FinetuningRun | None:
        with unit_of_work(self.database_url) as session:
            return session.scalars(
                select(FinetuningRun).where(FinetuningRun.openai_job_id == job_id)
            ).one_or_none()

    def deployment(self, job_id: str) -> Deployment | None:
        with unit_of_work(self.database_url) as session:
            return session.scalars(
                select(Deployment)
                .join(FinetuningRun, FinetuningRun.id == Deployment.run_id)
                .where(FinetuningRun.openai_job_id == job_id)
            ).one_or_none()

    def operation(self, operation_id: str) -> Operation:
        with unit_of_work(self.database_url) as session:
            return session.get_one(Operation, operation_id)

    def audit_actions(self, tenant: str) -> list[tuple[str, int | None]]:
        with unit_of_work(self.database_url) as session:
            rows = session.execute(
                select(TrafficEvent.action, TrafficEvent.version)
                .join(Tenant, Tenant.id == TrafficEvent.tenant_id)
                .where(Tenant.slug == tenant)
                .order_by(TrafficEvent.id)
            )
            return [(a, v) for a, v in rows]

    def count(self, model: type[Any], tenant: str) -> int:
        with unit_of_work(self.database_url) as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(model)
                    .join(Tenant, Tenant.id == model.tenant_id)
                    .where(Tenant.slug == tenant)
                )
                or 0
            )


@contextmanager
def e2e_stack(request: pytest.FixtureRequest, tmp: Path, **settings: Any) -> Iterator[Stack]:
    """The stack for one module; `settings` are FTDEPLOY_ settings for the worker and this
    process (e.g. `openai_timeout_seconds=1`). Workers started through it are stopped at exit."""
    postgres: services.Service = request.getfixturevalue("postgres")
    database_url = fresh_postgres_url(postgres, request.getfixturevalue("postgres_template"))
    broker_url = fresh_broker_url(request.getfixturevalue("redis_service").url)
    with FakeOpenAI() as fake, pytest.MonkeyPatch.context() as patch:
        env = worker_env(
            database_url=database_url,
            broker_url=broker_url,
            openai_base_url=fake.base_url,
            data_dir=tmp / "data",
            **settings,
        )
        use_env(env, patch)
        stack = Stack(env=env, fake=fake, database_url=database_url, tmp=tmp)
        try:
            yield stack
        finally:
            for worker in stack.workers:
                worker.stop()
    reset_settings()
    bind = registry_db.session_factory(database_url).kw.get("bind")
    if bind is not None:
        bind.dispose()
    registry_db._session_factory.cache_clear()
    services.drop_database(postgres.url, database_url.rsplit("/", 1)[1])
