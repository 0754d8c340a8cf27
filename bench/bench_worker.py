"""The worker: job-finished events per second, against Celery no-op tasks on the same broker,
and the worker's memory as events go through.

Ours: a real worker (`celery -A worker.app worker`, prefork, 2 processes, ftdeploy's settings)
over the run's Redis and PostgreSQL and the fake OpenAI (in this process). Every event is a
job that succeeded: the worker records the event, polls the job and its result file over HTTP,
records the run and deploys it (a new version at 100%, under the tenant's lock) — the whole
production path. Events are spread over 20 tenants.

Baseline: a worker with the same configuration and concurrency running `bench.noop` tasks
(bench/noop_app.py) on the same Redis server: what Celery itself costs per task.

Ceiling: the same worker and events with OpenAI's two polls answered in the process
(bench/nopoll_app.py): what the rest of the path allows, so that the gap between the two rows is
what the polls cost (the SDK's client work and the two round trips), and the gap between the
ceiling and the goal is what the database and Celery's own work leave. It informs.

Both queues are filled before their worker starts; the rate is counted from the moment the
worker reports ready to the moment the last message is done (ours: the event rows are `done`;
no-op: the queue and its unacked set are empty). Memory: the resident set (VmRSS) of each pool
process when half the events are done and when all are; it must stay flat. Growth: the rate over
the second half of the events against the first half's, when each tenant has twice the history
(versions, deployments, audit events): an event's cost must not grow with what came before it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import func, select

from bench.common import BenchEnv, Row, fresh_database
from registry.db import make_engine, unit_of_work
from registry.models import EventState, JobEvent, ModelVersion
from registry.settings import Settings
from registry.tenants import PolicyChanges, create_tenant, set_policy
from tests.harness import WorkerProcess, fresh_broker_url, worker_env
from worker.app import QUEUE, make_app
from worker.demo.fake_openai import FakeOpenAI

TENANTS = 20
CONCURRENCY = 2
FLAT = 1.05  # RSS may grow at most 5% between the half-way mark and the end
STEADY = 0.9  # the second half's rate at least 90% of the first's


def run(env: BenchEnv) -> list[Row]:
    events, noops = (200, 1_000) if env.quick else (10_000, 10_000)
    with tempfile.TemporaryDirectory(prefix="ftdeploy-bench-worker-") as tmp:
        work = Path(tmp)
        noop_rate = _noop_rate(env, noops, work)
        ours = _event_rate(env, events, work)
        ceiling = _event_rate(env, events, work, app="bench.nopoll_app")
    half, full = ours["rss_half"], ours["rss_full"]
    growth = {pid: full[pid] / half[pid] for pid in full if half.get(pid)}
    rss_half = max(half.values()) if half else 0.0
    rss_full = max(full.values()) if full else 0.0
    flat = bool(growth) and max(growth.values()) <= FLAT
    # The polls' part of the real worker's time per event (1 / rate).
    polls_share = round(1 - ours["rate"] / ceiling["rate"], 3) if ceiling["rate"] else None
    notes: dict[str, Any] = {
        "events": events,
        "noop_tasks": noops,
        "concurrency": CONCURRENCY,
        "tenants": TENANTS,
        "events_done": ours["done"],
        "versions_registered": ours["versions"],
        "seconds": round(ours["seconds"], 2),
    }
    return [
        Row(
            "job-finished events through the worker",
            ours["rate"],
            noop_rate,
            "events/s",
            f"Celery no-op tasks on the same Redis, same config, {CONCURRENCY} processes",
            goal=">= 0.25x",
            met=ours["rate"] >= 0.25 * noop_rate and ours["done"] == events,
            notes=notes,
        ),
        Row(
            "job-finished events, OpenAI's two polls answered in-process",
            ceiling["rate"],
            noop_rate,
            "events/s",
            f"Celery no-op tasks on the same Redis, same config, {CONCURRENCY} processes",
            notes={
                "events_done": ceiling["done"],
                "seconds": round(ceiling["seconds"], 2),
                "polls_share": polls_share,
            },
        ),
        Row(
            f"job-finished rate, second half of {events:,} events",
            ours["rate_second_half"],
            ours["rate_first_half"],
            "events/s",
            "the first half, each tenant with half the history",
            goal=f">= {STEADY}x",
            met=ours["rate_second_half"] >= STEADY * ours["rate_first_half"],
        ),
        Row(
            f"worker RSS per pool process after {events:,} events",
            rss_full,
            rss_half,
            "MiB",
            f"the same processes after {events // 2:,} events",
            higher_is_better=False,
            goal=f"flat (<= +{round((FLAT - 1) * 100)}%)",
            met=flat,
            notes={
                "rss_half_mib": {str(k): round(v, 1) for k, v in half.items()},
                "rss_full_mib": {str(k): round(v, 1) for k, v in full.items()},
                "main_process_mib": round(ours["rss_main"], 1),
            },
        ),
    ]


# -- baseline ------------------------------------------------------------------------------------


def _noop_rate(env: BenchEnv, count: int, work: Path) -> float:
    broker = fresh_broker_url(env.redis_url)
    sender = make_app(Settings(broker_url=broker, database_url="sqlite://"))
    _publish(sender, [("bench.noop", (), {})] * count)
    client = redis.Redis.from_url(broker)

    def remaining() -> int:
        return int(client.llen(QUEUE)) + int(client.hlen("unacked"))

    worker_environment = worker_env(
        database_url="sqlite://",
        broker_url=broker,
        openai_base_url="http://127.0.0.1:9/v1",
        data_dir=work / "noop-data",
    )
    with WorkerProcess(
        worker_environment, work / "noop.log", concurrency=CONCURRENCY, name="noop",
        app="bench.noop_app",
    ) as worker:  # fmt: skip
        started, left = time.monotonic(), remaining()
        _until(lambda: remaining() == 0, 600, 0.02, lambda: f"no-op worker stuck:\n{worker.log()}")
        elapsed = time.monotonic() - started
    client.close()
    return left / elapsed


# -- ours --------------------------------------------------------------------------------------


def tenant_of(job_id: str) -> str:
    """The tenant of one of the benchmark's jobs, by the number that ends its id."""
    return f"bench-{int(job_id.rsplit('-', 1)[1]) % TENANTS:02d}"


def _event_rate(env: BenchEnv, count: int, work: Path, app: str = "worker.app") -> dict[str, Any]:
    url = fresh_database(env, "bench_worker")
    slugs = [tenant_of(f"ftjob-{n}") for n in range(TENANTS)]
    with unit_of_work(url) as session:
        for slug in slugs:
            tenant = create_tenant(session, slug)
            set_policy(session, tenant.id, PolicyChanges(require_evaluation=False))
    broker = fresh_broker_url(env.redis_url)
    engine = make_engine(url, pool_size=1)
    stamp = datetime.now(UTC).strftime("%H%M%S")
    ids = [f"ftjob-bench{stamp}-{n:06d}" for n in range(count)]
    jobs = [(job_id, tenant_of(job_id)) for job_id in ids]

    def done() -> int:
        with engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count())
                    .select_from(JobEvent)
                    .where(JobEvent.state == EventState.DONE)
                )
                or 0
            )

    with FakeOpenAI() as fake:
        for job_id, slug in jobs:
            fake.add_job(job_id, statuses=("succeeded",), tenant=slug)
        sender = make_app(Settings(broker_url=broker, database_url=url))
        _publish(sender, [("ftdeploy.job_finished", (job_id,), {}) for job_id, _ in jobs])
        worker_environment = worker_env(
            database_url=url, broker_url=broker, openai_base_url=fake.base_url,
            data_dir=work / app,
        )  # fmt: skip
        with WorkerProcess(
            worker_environment, work / f"{app}.log", concurrency=CONCURRENCY, name="bench", app=app
        ) as worker:
            started, first = time.monotonic(), done()
            stuck = lambda: f"worker stuck at {done()} of {count}:\n{worker.log()}"  # noqa: E731
            _until(lambda: done() >= count // 2, 1800, 0.1, stuck)
            halfway, done_halfway = time.monotonic(), done()
            rss_half = {pid: _rss_mib(pid) for pid in worker.pool_pids()}
            _until(lambda: done() >= count, 1800, 0.1, stuck)
            elapsed = time.monotonic() - started
            second_half = time.monotonic() - halfway
            rss_full = {pid: _rss_mib(pid) for pid in worker.pool_pids()}
            rss_main = _rss_mib(worker.pid)
    with engine.connect() as conn:
        versions = int(conn.scalar(select(func.count()).select_from(ModelVersion)) or 0)
    finished = done()
    engine.dispose()
    return {
        "rate": (count - first) / elapsed,
        "rate_first_half": (done_halfway - first) / (halfway - started),
        "rate_second_half": (count - done_halfway) / second_half,
        "seconds": elapsed,
        "done": finished,
        "versions": versions,
        "rss_half": rss_half,
        "rss_full": rss_full,
        "rss_main": rss_main,
    }


# -- helpers -------------------------------------------------------------------------------------


def _publish(app: Any, messages: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
    with app.producer_or_acquire() as producer:
        for name, args, kwargs in messages:
            app.send_task(name, args=args, kwargs=kwargs, producer=producer)


def _until(
    condition: Callable[[], bool], timeout: float, interval: float, message: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(message())
        time.sleep(interval)


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
