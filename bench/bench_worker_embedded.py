"""The worker on the embedded defaults: job-finished events per second on SQLite and the
filesystem broker (what a newcomer's `ftdeploy worker` runs on), against Celery no-op tasks on
the same filesystem broker.

Ours: `bench_worker`'s benchmark with nothing but a data directory: a real worker
(`celery -A worker.app worker`, prefork, 2 processes) over a SQLite file and the filesystem
broker (`worker/embedded_broker.py`), and the fake OpenAI (in this process). Every event is a
job that succeeded, deployed at 100% under the tenant's lock (SQLite: the database's write lock),
the whole production path. Events are spread over 20 tenants.

Baseline: a worker with the same configuration and concurrency running `bench.noop` tasks
(bench/noop_app.py) on a filesystem broker of its own: what Celery itself costs per task there.

Both queues are filled before their worker starts; the rate is counted from the moment the
worker reports ready to the moment the last message is done (ours: the event rows are `done`;
no-op: no message file is left in the queue folder).
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.bench_worker import CONCURRENCY, TENANTS, _publish, _until
from bench.common import BenchEnv, Row
from migrations import upgrade
from registry.db import make_engine, unit_of_work
from registry.models import EventState, JobEvent
from registry.settings import Settings
from registry.tenants import PolicyChanges, create_tenant, set_policy
from tests.harness import WorkerProcess, worker_env
from worker.app import make_app
from worker.demo.fake_openai import FakeOpenAI

BROKER = "filesystem://"


def run(env: BenchEnv) -> list[Row]:
    events, noops = (200, 1_000) if env.quick else (2_000, 3_000)
    with tempfile.TemporaryDirectory(prefix="ftdeploy-bench-embedded-") as tmp:
        work = Path(tmp)
        noop_rate = _noop_rate(noops, work / "noop")
        ours = _event_rate(events, work / "ours")
    return [
        Row(
            "job-finished events through the worker, embedded (SQLite, filesystem broker)",
            ours["rate"],
            noop_rate,
            "events/s",
            f"Celery no-op tasks on the same filesystem broker, same config, {CONCURRENCY} "
            "processes",
            notes={
                "events": events,
                "noop_tasks": noops,
                "concurrency": CONCURRENCY,
                "tenants": TENANTS,
                "events_done": ours["done"],
                "seconds": round(ours["seconds"], 2),
            },
        )
    ]


def _queued(data_dir: Path) -> int:
    return sum(1 for _ in (data_dir / "broker" / "queue").glob("*.msg"))


def _noop_rate(count: int, data_dir: Path) -> float:
    database = f"sqlite:///{data_dir / 'unused.db'}"
    sender = make_app(Settings(broker_url=BROKER, database_url=database, data_dir=data_dir))
    _publish(sender, [("bench.noop", (), {})] * count)
    environment = worker_env(
        database_url=database,
        broker_url=BROKER,
        openai_base_url="http://127.0.0.1:9/v1",
        data_dir=data_dir,
    )
    with WorkerProcess(
        environment, data_dir / "noop.log", concurrency=CONCURRENCY, name="noop",
        app="bench.noop_app",
    ) as worker:  # fmt: skip
        started, left = time.monotonic(), _queued(data_dir)
        _until(
            lambda: _queued(data_dir) == 0,
            600,
            0.02,
            lambda: f"no-op worker stuck:\n{worker.log()}",
        )
        elapsed = time.monotonic() - started
    return left / elapsed


def _event_rate(count: int, data_dir: Path) -> dict[str, Any]:
    data_dir.mkdir(parents=True)
    url = f"sqlite:///{data_dir / 'ftdeploy.db'}"
    upgrade(url)
    slugs = [f"bench-{n:02d}" for n in range(TENANTS)]
    with unit_of_work(url) as session:
        for slug in slugs:
            tenant = create_tenant(session, slug)
            set_policy(session, tenant.id, PolicyChanges(require_evaluation=False))
    engine = make_engine(url)
    stamp = datetime.now(UTC).strftime("%H%M%S")
    jobs = [(f"ftjob-embed{stamp}-{n:06d}", slugs[n % TENANTS]) for n in range(count)]

    def done() -> int:
        with engine.connect() as conn:
            query = select(func.count()).select_from(JobEvent)
            return int(conn.scalar(query.where(JobEvent.state == EventState.DONE)) or 0)

    with FakeOpenAI() as fake:
        for job_id, slug in jobs:
            fake.add_job(job_id, statuses=("succeeded",), tenant=slug)
        sender = make_app(Settings(broker_url=BROKER, database_url=url, data_dir=data_dir))
        _publish(sender, [("ftdeploy.job_finished", (job_id,), {}) for job_id, _ in jobs])
        environment = worker_env(
            database_url=url, broker_url=BROKER, openai_base_url=fake.base_url, data_dir=data_dir
        )
        with WorkerProcess(
            environment, data_dir / "worker.log", concurrency=CONCURRENCY, name="embedded"
        ) as worker:
            started, first = time.monotonic(), done()
            stuck = lambda: f"worker stuck at {done()} of {count}:\n{worker.log()}"  # noqa: E731
            _until(lambda: done() >= count, 1800, 0.1, stuck)
            elapsed = time.monotonic() - started
    finished = done()
    engine.dispose()
    return {"rate": (count - first) / elapsed, "seconds": elapsed, "done": finished}
