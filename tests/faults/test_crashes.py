"""Processes that die: pool processes killed before and after the commit or from outside while
they poll, a worker killed with SIGKILL mid-poll and after a commit or while it holds prefetched
and running events, a task that outlives the visibility timeout, and a poison event that kills its
process every time. Every event still ends processed exactly once.

The broker's visibility timeout is short (conftest's SETTINGS), so the messages a dead worker held
are redelivered within seconds; the fake OpenAI answers slowly where a kill must land mid-poll. A
message the broker lost outright is sent again by beat's reconciler.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
import redis

from registry.jobs.pipeline import MAX_CRASHES
from registry.models import Deployment, ModelVersion
from tests.faults.conftest import SETTINGS, FaultStack
from tests.harness import WorkerProcess
from tests.worker.e2e_stack import EventView
from worker import cli

pytestmark = pytest.mark.faults


def _tenant_with_jobs(stack: FaultStack, slug: str, jobs: list[str], **job: object) -> None:
    assert cli.main(["tenant", "add", slug, "--no-require-evaluation"]) == 0
    for job_id in jobs:
        stack.fake.add_job(job_id, statuses=("succeeded",), tenant=slug, **job)  # type: ignore[arg-type]


def _kill_when(
    worker: WorkerProcess, condition: Callable[[], bool], timeout: float, what: str
) -> None:
    """SIGKILL the worker at a moment `condition` holds: each check runs while the worker is
    stopped (SIGSTOP), so what it saw is what the kill leaves (a state seen and then killed a few
    milliseconds later may be gone: an event mid-poll a moment ago has since finished it)."""
    deadline = time.monotonic() + timeout
    while True:
        os.killpg(worker.pid, signal.SIGSTOP)
        if condition():
            worker.kill()
            return
        os.killpg(worker.pid, signal.SIGCONT)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# A pool process that kills itself is noticed by its worker through the process's sentinel, or at
# the latest by the pool's maintenance every 5 s. On a loaded machine the second can come after
# conftest's 4 s hard time limit, which then acks the message as timed out instead of having it
# redelivered: workers whose processes kill themselves get a time limit above that interval.
SELF_KILLING = {
    "FTDEPLOY_TASK_TIME_LIMIT_SECONDS": "8",
    "FTDEPLOY_VISIBILITY_TIMEOUT_SECONDS": "10",
}


def test_pool_process_killed_before_and_after_the_commit(stack: FaultStack) -> None:
    before, after, plain = "ftjob-kill-before", "ftjob-kill-after", "ftjob-kill-none"
    jobs = [before, after, plain]
    _tenant_with_jobs(stack, "killed", jobs)
    worker = stack.worker(crash={before: "before_commit", after: "after_commit"}, env=SELF_KILLING)
    for job in jobs:
        assert cli.main(["job-finished", job]) == 0

    ended = stack.wait_ended(jobs, 60)
    assert {job: view.state for job, view in ended.items()} == dict.fromkeys(jobs, "done")
    # The attempt killed after its commit ended the event before it died: its redelivery comes
    # once the worker has noticed the lost process. Wait for it, then check everything below.
    again = [before, after]
    stack.wait(
        lambda: all((v := stack.event(j)) and v.attempts >= 2 and not v.in_flight for j in again),
        60,
        "both killed events to be attempted again",
    )
    ended = stack.wait_ended(jobs, 60)
    data = stack.tmp / "data"
    # Both crashes happened (the markers), and each killed attempt was run again.
    assert (data / f"crashed-before_commit-{before}").exists()
    assert (data / f"crashed-after_commit-{after}").exists()
    assert ended[before].attempts == 2 and ended[before].crashes == 1
    # The attempt killed after its commit had already ended the event: no crash to count, and
    # the redelivery found the work done.
    assert ended[after].attempts == 2 and ended[after].crashes == 0
    assert "already handled" in (ended[after].outcome or "")
    assert ended[plain].attempts == 1
    assert stack.fake.requests(before) == stack.fake.requests(after) == 2
    assert worker.process is not None and worker.process.poll() is None  # the pool was refilled
    stack.check(accepted=jobs)


def test_main_process_killed_holding_prefetched_and_running_events(stack: FaultStack) -> None:
    jobs = [f"ftjob-main-{n}" for n in range(6)]
    _tenant_with_jobs(stack, "main-killed", jobs)
    for job in jobs:
        stack.fake.inject(job, ("slow", 1.0))  # each first poll takes a while: events pile up
    # Two running and two prefetched: prefetch multiplier 2 with two processes.
    first = stack.worker("w1", extra_args=("--prefetch-multiplier=2",))
    for job in jobs:
        assert cli.main(["job-finished", job]) == 0
    broker = redis.Redis.from_url(stack.broker_url)
    seen: dict[str, list[str]] = {}

    def holding() -> bool:
        seen["in_flight"] = [j for j in jobs if (v := stack.event(j)) is not None and v.in_flight]
        polled = sum(stack.fake.requests(j) for j in jobs) >= 2
        return polled and broker.hlen("unacked") >= 3 and bool(seen["in_flight"])

    # SIGKILL to the main process and its pool, no goodbye.
    _kill_when(first, holding, 30, "w1 to hold running and prefetched events")
    killed_at = time.monotonic()
    in_flight = seen["in_flight"]

    stack.worker("w2")
    ended = stack.wait_ended(jobs, 60)
    assert {job: view.state for job, view in ended.items()} == dict.fromkeys(jobs, "done")
    for job in in_flight:
        assert ended[job].crashes == 1, (job, ended[job])  # the redelivery found the dead mark
    # What w1 held came back only once the visibility timeout had passed.
    assert time.monotonic() - killed_at >= SETTINGS["visibility_timeout_seconds"] - 1
    assert broker.hlen("unacked") == 0 and broker.llen("ftdeploy") == 0
    stack.check(accepted=jobs)


def test_task_outliving_the_visibility_timeout_has_one_effect(stack: FaultStack) -> None:
    job = "ftjob-outlives"
    _tenant_with_jobs(stack, "outlived", [job])
    stack.fake.inject(job, ("slow", 5))  # the first poll outlasts the visibility timeout
    # Settings refuse a visibility timeout shorter than the time limit; the fault app lowers it
    # behind their back, as a misconfigured or overloaded deployment would.
    env = {
        "FTDEPLOY_TASK_TIME_LIMIT_SECONDS": "10",
        "FTDEPLOY_VISIBILITY_TIMEOUT_SECONDS": "12",
        "FTDEPLOY_OPENAI_TIMEOUT_SECONDS": "8",
        "FTDEPLOY_FAULT_VISIBILITY_TIMEOUT": "2",
    }
    stack.worker("w1", env=env)
    assert cli.main(["job-finished", job]) == 0
    stack.wait(lambda: stack.fake.requests(job) >= 1, 30, "w1 to poll")
    stack.worker("w2", env=env)
    # The message is redelivered while the first attempt still waits for its reply.
    stack.wait(lambda: stack.fake.requests(job) >= 2, 30, "a second attempt of the same event")
    stack.wait(lambda: _finished_attempts(stack) >= 2, 30, "both attempts to finish")
    view = stack.wait_ended([job], 30)[job]
    assert view.state == "done" and view.attempts >= 2 and view.crashes >= 1
    stack.check(accepted=[job])


def _finished_attempts(stack: FaultStack) -> int:
    lines = stack.logs().splitlines()
    return sum(1 for line in lines if "ftdeploy.job_finished[" in line and " succeeded in " in line)


def test_poison_event_is_failed_after_bounded_crashes_and_the_queue_moves_on(
    stack: FaultStack,
) -> None:
    poison, others = "ftjob-poison", ["ftjob-after-poison-1", "ftjob-after-poison-2"]
    _tenant_with_jobs(stack, "poisoned", [poison, *others])
    worker = stack.worker(crash={poison: "poison"}, env=SELF_KILLING)
    assert cli.main(["job-finished", poison]) == 0
    for job in others:
        assert cli.main(["job-finished", job]) == 0

    ended = stack.wait_ended([poison, *others], 90)
    view = ended[poison]
    assert view.state == "failed", view
    assert view.outcome is not None and f"died {MAX_CRASHES} times" in view.outcome
    assert view.crashes == MAX_CRASHES and view.attempts == MAX_CRASHES + 1
    assert stack.fake.requests(poison) == 0  # it died before polling, every time
    assert all(ended[job].state == "done" for job in others)
    assert worker.process is not None and worker.process.poll() is None
    stack.check(accepted=[poison, *others])


SLOW_REPLY = 0.8  # seconds the first GET of a job is held, so that a kill lands mid-poll


def _events(stack: FaultStack, jobs: list[str]) -> dict[str, EventView | None]:
    return {job: stack.event(job) for job in jobs}


def _assert_each_event_once(stack: FaultStack, tenant: str, jobs: list[str]) -> None:
    ended = {job: stack.wait_event_ended(job, timeout=60) for job in jobs}
    assert {job: e.state for job, e in ended.items()} == dict.fromkeys(jobs, "done")
    numbers = [v for v, _, _ in stack.versions(tenant)]
    assert numbers == list(range(1, len(jobs) + 1))  # one per run, no gaps, no duplicates
    assert stack.count(ModelVersion, tenant) == stack.count(Deployment, tenant) == len(jobs)
    # One deploy each (beat's retention may archive old versions too: other actions).
    assert sorted(v for a, v in stack.audit_actions(tenant) if a == "deploy") == numbers
    assert stack.split(tenant) == {len(jobs): 100}  # immediate: the newest serves alone


def test_worker_killed_mid_poll_and_after_a_commit(stack: FaultStack) -> None:
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
        seen = _events(stack, jobs).values()
        return stack.count(ModelVersion, tenant) >= 1 and any(e and e.in_flight for e in seen)

    _kill_when(first, mid_flight, 30, "a version committed while other events are mid-poll")
    at_kill = _events(stack, jobs)  # as `mid_flight` saw it: nothing ran in between
    interrupted = [job for job, e in at_kill.items() if e is not None and e.in_flight]
    assert interrupted, at_kill
    assert any(e is None or e.state != "done" for e in at_kill.values())

    # With beat, as in production: its reconciler re-sends an event whose message died with w1
    # (Redis loses one that w1 had popped but not yet recorded as unacknowledged).
    stack.start_worker("w2", beat=True)
    _assert_each_event_once(stack, tenant, jobs)
    for job in interrupted:
        # Attempted again after the kill: by the redelivered message (which notes the crash),
        # or by the reconciler's re-send when the broker had lost the message.
        event, before = stack.event(job), at_kill[job]
        assert event is not None and before is not None
        assert event.attempts > before.attempts, (job, before, event)
    stack.check(accepted=jobs)


def test_pool_process_killed_mid_poll_is_redelivered(stack: FaultStack) -> None:
    tenant, job = "crash-pool", "ftjob-crash-pool-1"
    assert cli.main(["tenant", "add", tenant, "--no-require-evaluation"]) == 0
    stack.fake.add_job(job, statuses=("succeeded",), tenant=tenant)
    stack.fake.inject(job, ("slow", 2 * SLOW_REPLY))
    worker = stack.start_worker("w3")  # one consumer, so this worker gets the event; no beat
    assert worker.process is not None
    assert cli.main(["job-finished", job]) == 0
    stack.wait(lambda: stack.fake.requests(job) >= 1, 30, "the worker to be mid-poll")
    for pid in worker.pool_pids():
        os.kill(pid, signal.SIGKILL)  # the pool processes only: the main process lives on
    _assert_each_event_once(stack, tenant, [job])
    assert worker.process.poll() is None  # the same worker handled the redelivery
    assert stack.fake.requests(job) == 2
    event = stack.event(job)
    assert event is not None and event.crashes == 1
    stack.check(accepted=[job])
