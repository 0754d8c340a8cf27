"""Workers killed with SIGKILL while handling events: every event still ends processed exactly
once (one version per run, version numbers without gaps or duplicates, one audit event each).

The broker is Redis with a 5 s visibility timeout (task time limit 3 s, longest countdown 2 s),
so the messages a dead worker held are redelivered within seconds; the fake OpenAI answers
slowly, so the kill lands while attempts are mid-poll.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from registry.models import Deployment, ModelVersion
from tests.worker.e2e_stack import EventView, Stack, e2e_stack
from worker import cli

pytestmark = pytest.mark.e2e

SLOW_REPLY = 0.8  # seconds the first GET of every job is held


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with e2e_stack(
        request,
        tmp_path_factory.mktemp("crash"),
        visibility_timeout_seconds=5,
        task_time_limit_seconds=3,
        job_poll_max_seconds=2,
    ) as stack:
        yield stack


def events(stack: Stack, jobs: list[str]) -> dict[str, EventView | None]:
    return {job: stack.event(job) for job in jobs}


def assert_each_event_once(stack: Stack, tenant: str, jobs: list[str]) -> None:
    ended = {job: stack.wait_event_ended(job, timeout=60) for job in jobs}
    assert {job: e.state for job, e in ended.items()} == dict.fromkeys(jobs, "done")
    numbers = [v for v, _, _ in stack.versions(tenant)]
    assert numbers == list(range(1, len(jobs) + 1))  # one per run, no gaps, no duplicates
    assert stack.count(ModelVersion, tenant) == stack.count(Deployment, tenant) == len(jobs)
    assert sorted(v for _, v in stack.audit_actions(tenant)) == numbers
    assert stack.split(tenant) == {len(jobs): 100}  # immediate: the newest serves alone


def test_worker_killed_mid_poll_and_after_a_commit(stack: Stack) -> None:
    tenant, jobs = "crash", [f"ftjob-crash-{n}" for n in range(1, 7)]
    assert cli.main(["tenant", "add", tenant, "--no-require-evaluation"]) == 0
    for job in jobs:
        stack.fake.add_job(job, statuses=("running", "succeeded"), tenant=tenant)
        stack.fake.inject(job, ("slow", SLOW_REPLY))
    first = stack.start_worker("w1")
    for job in jobs:
        assert cli.main(["job-finished", job]) == 0

    def mid_flight() -> bool:
        # After a commit (a version exists) and before others' (attempts are mid-poll).
        seen = events(stack, jobs).values()
        return stack.count(ModelVersion, tenant) >= 1 and any(e and e.in_flight for e in seen)

    stack.wait(mid_flight, 30, "a version committed while other events are mid-poll")
    first.kill()
    at_kill = events(stack, jobs)  # frozen: nothing runs now
    interrupted = [job for job, e in at_kill.items() if e is not None and e.in_flight]
    assert interrupted, at_kill
    assert any(e is None or e.state != "done" for e in at_kill.values())

    # With beat, as in production: its reconciler re-sends an event whose message died with w1
    # (Redis loses one that w1 had popped but not yet recorded as unacknowledged).
    stack.start_worker("w2", beat=True)
    assert_each_event_once(stack, tenant, jobs)
    for job in interrupted:
        # The redelivered attempt found the dead one's mark: one crash, noted, then handled.
        event = stack.event(job)
        assert event is not None and event.crashes == 1, (job, event)


def test_pool_process_killed_mid_poll_is_redelivered(stack: Stack) -> None:
    tenant, job = "crash-pool", "ftjob-crash-pool-1"
    assert cli.main(["tenant", "add", tenant, "--no-require-evaluation"]) == 0
    stack.fake.add_job(job, statuses=("succeeded",), tenant=tenant)
    stack.fake.inject(job, ("slow", 2 * SLOW_REPLY))
    worker = stack.workers[-1] if stack.workers else stack.start_worker("w3")
    assert worker.process is not None and worker.process.poll() is None
    assert cli.main(["job-finished", job]) == 0
    stack.wait(lambda: stack.fake.requests(job) >= 1, 30, "the worker to be mid-poll")
    for pid in worker.pool_pids():
        os.kill(pid, signal.SIGKILL)  # the pool processes only: the main process lives on
    assert_each_event_once(stack, tenant, [job])
    assert worker.process.poll() is None  # the same worker handled the redelivery
    assert stack.fake.requests(job) == 2
    event = stack.event(job)
    assert event is not None and event.crashes == 1
