"""Workers killed with SIGKILL while handling events: every event still ends processed exactly
once (one version per run, version numbers without gaps or duplicates, one audit event each).

The broker is Redis with a 5 s visibility timeout (task time limit 3 s, longest countdown 2 s),
so the messages a dead worker held are redelivered within seconds; the fake OpenAI answers
slowly, so the kill lands while attempts are mid-poll. A message the broker lost outright is sent
again by beat's reconciler.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from registry.db import unit_of_work
from registry.jobs import events as job_events
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
    # One deploy each (beat's retention may archive old versions too: other actions).
    assert sorted(v for a, v in stack.audit_actions(tenant) if a == "deploy") == numbers
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
        # Attempted again after the kill: by the redelivered message (which notes the crash),
        # or by the reconciler's re-send when the broker had lost the message.
        event, before = stack.event(job), at_kill[job]
        assert event is not None and before is not None
        assert event.attempts > before.attempts, (job, before, event)


def test_an_event_whose_message_the_broker_lost_is_sent_again(stack: Stack) -> None:
    tenant, job = "crash-lost", "ftjob-crash-lost-1"
    assert cli.main(["tenant", "add", tenant, "--no-require-evaluation"]) == 0
    stack.fake.add_job(job, statuses=("succeeded",), tenant=tenant)
    if not any(w.beat and w.process and w.process.poll() is None for w in stack.workers):
        stack.start_worker("w4", beat=True)
    # Accepted and handed to the broker, which then lost the message (as Redis does when a worker
    # is killed between popping it and recording it as unacknowledged).
    with unit_of_work() as session:
        job_events.accept_event(session, job, tenant, "test")
        job_events.mark_enqueued(session, job)
    assert_each_event_once(stack, tenant, [job])
    event = stack.event(job)
    assert event is not None and event.attempts == 1


def test_pool_process_killed_mid_poll_is_redelivered(stack: Stack) -> None:
    tenant, job = "crash-pool", "ftjob-crash-pool-1"
    assert cli.main(["tenant", "add", tenant, "--no-require-evaluation"]) == 0
    stack.fake.add_job(job, statuses=("succeeded",), tenant=tenant)
    stack.fake.inject(job, ("slow", 2 * SLOW_REPLY))
    alive = [w for w in stack.workers if w.process is not None and w.process.poll() is None]
    worker = next((w for w in alive if not w.beat), None)
    if worker is None:
        # One consumer, so this worker gets the event; and no beat among its children below.
        for other in alive:
            other.stop()
        worker = stack.start_worker("w3")
    assert worker.process is not None
    assert cli.main(["job-finished", job]) == 0
    stack.wait(lambda: stack.fake.requests(job) >= 1, 30, "the worker to be mid-poll")
    for pid in worker.pool_pids():
        os.kill(pid, signal.SIGKILL)  # the pool processes only: the main process lives on
    assert_each_event_once(stack, tenant, [job])
    assert worker.process.poll() is None  # the same worker handled the redelivery
    assert stack.fake.requests(job) == 2
    event = stack.event(job)
    assert event is not None and event.crashes == 1
