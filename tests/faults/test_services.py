"""The services under the worker fail: PostgreSQL connections terminated mid-transaction, and
Redis restarted (persistence on, as production runs it) while events are in flight."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tests import services
from tests.faults.conftest import FaultStack
from tests.services import libpq_url
from worker import cli

pytestmark = pytest.mark.faults

APPLICATION = "ftdeploy-fault-worker"


def _tenant_with_jobs(stack: FaultStack, slug: str, jobs: list[str], slow: float) -> None:
    assert cli.main(["tenant", "add", slug, "--no-require-evaluation"]) == 0
    for job in jobs:
        stack.fake.add_job(job, statuses=("succeeded",), tenant=slug)
        stack.fake.inject(job, ("slow", slow))


def test_postgres_connections_terminated_mid_transaction(stack: FaultStack) -> None:
    slug, jobs = "terminated", [f"ftjob-term-{n}" for n in range(16)]
    _tenant_with_jobs(stack, slug, jobs, slow=0.05)
    # The worker's connections carry a name, so only they are terminated, not this test's.
    separator = "&" if "?" in stack.database_url else "?"
    named = f"{stack.database_url}{separator}application_name={APPLICATION}"
    worker = stack.worker(env={"FTDEPLOY_DATABASE_URL": named})
    for job in jobs:
        assert cli.main(["job-finished", job]) == 0

    killed: list[str] = []
    stop = threading.Event()

    def terminate_busy_backends() -> None:
        with psycopg.connect(libpq_url(stack.database_url), autocommit=True) as admin:
            while not stop.is_set() and len(killed) < 12:
                rows = admin.execute(
                    "SELECT state, pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s AND state IN ('active', 'idle in transaction')",
                    (APPLICATION,),
                ).fetchall()
                killed.extend(state for state, ok in rows if ok)
                time.sleep(0.005 if not rows else 0.15)  # let some work through between kills

    killer = threading.Thread(target=terminate_busy_backends, daemon=True)
    killer.start()
    try:
        ended = stack.wait_ended(jobs, 120)
    finally:
        stop.set()
        killer.join(10)
    assert killed, "no worker transaction was caught mid-flight"
    assert {job: view.state for job, view in ended.items()} == dict.fromkeys(jobs, "done")
    log = worker.log_path.read_text(errors="replace")
    assert "job.retry" in log and ("terminat" in log or "server closed" in log), log[-3000:]
    stack.check(accepted=jobs)


def test_redis_restarted_during_a_run(
    stack_on_own_redis: FaultStack, own_redis: services.Service
) -> None:
    stack = stack_on_own_redis
    slug, jobs = "restarted", [f"ftjob-redis-{n}" for n in range(16)]
    late = [f"ftjob-redis-late-{n}" for n in range(4)]
    _tenant_with_jobs(stack, slug, [*jobs, *late], slow=0.2)
    stack.worker()
    for job in jobs:
        assert cli.main(["job-finished", job]) == 0
    stack.wait(
        lambda: sum(1 for j in jobs if (v := stack.event(j)) and v.state == "done") >= 3,
        60,
        "a few events done before the restart",
    )
    own_redis.restart()  # SIGTERM (the AOF is flushed), then the same port and data
    for job in late:  # the door works again once Redis is back
        assert cli.main(["job-finished", job]) == 0
    ended = stack.wait_ended([*jobs, *late], 120)
    assert {job: v.state for job, v in ended.items()} == dict.fromkeys([*jobs, *late], "done")
    stack.check(accepted=[*jobs, *late])
