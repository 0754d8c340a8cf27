"""OpenAI misbehaving, through a real worker polling with the real openai SDK: each fault the fake
can inject, alone (transient ones are retried until the job deploys, permanent ones end the event
as failed at once with the reason), and long stretches of them — 429 with Retry-After, 500s,
timeouts, refused connections, malformed bodies — while several events wait: every retry is
bounded and spaced by the backoff, and every event ends succeeded or recorded as failed with its
reason."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.conftest import SETTINGS, FaultStack
from worker import cli

pytestmark = pytest.mark.faults

MAX_RETRIES = 8
POLL = 0.2  # FTDEPLOY_JOB_POLL_SECONDS: the first backoff step
POLL_MAX = 1.0  # FTDEPLOY_JOB_POLL_MAX_SECONDS: the longest
RETRY_AFTER = 0.8
CLIENT_TIMEOUT = float(SETTINGS["openai_timeout_seconds"])
SLACK = 0.05  # scheduling noise between two arrivals

STRETCHES: dict[str, list[tuple[Any, ...]]] = {
    "rate-limited": [("429", RETRY_AFTER)] * 6,
    "server-errors": [("500",), ("502",), ("503",), ("500",), ("500",), ("504",)],
    "timeouts": [("slow", 2.0)] * 3,  # beyond the client's 1.5 s timeout
    "malformed": [("malformed", k) for k in ("json", "text", "shape", "id", "status", "json")],
    "mixed": [("429", RETRY_AFTER), ("500",), ("malformed", "json"), ("drop",), ("slow", 2.0)]
    + [("500",)] * 3,
    "never-recovers": [("500",)] * (MAX_RETRIES + 5),
}


def test_openai_misbehaving_for_long_stretches(stack: FaultStack) -> None:
    slug = "upstream"
    assert cli.main(["tenant", "add", slug, "--no-require-evaluation"]) == 0
    jobs = {name: f"ftjob-up-{name}" for name in STRETCHES}
    refused = "ftjob-up-refused"  # polled while the whole API is down
    for name, job in jobs.items():
        stack.fake.add_job(job, statuses=("succeeded",), tenant=slug)
        stack.fake.inject(job, *STRETCHES[name])
    stack.fake.add_job(refused, statuses=("succeeded",), tenant=slug)
    env = {
        "FTDEPLOY_MAX_RETRIES": str(MAX_RETRIES),
        "FTDEPLOY_JOB_POLL_SECONDS": str(POLL),
        "FTDEPLOY_JOB_POLL_MAX_SECONDS": str(POLL_MAX),
    }
    stack.worker(concurrency=3, env=env)
    for job in jobs.values():
        assert cli.main(["job-finished", job]) == 0
    ended = stack.wait_ended(list(jobs.values()), 120)
    for name, job in jobs.items():
        faults = STRETCHES[name]
        view = ended[job]
        requests = stack.fake.request_times(job)  # as the server saw them arrive
        if name == "never-recovers":
            # Bounded: the first attempt and MAX_RETRIES retries, then failed with the reason.
            assert view.state == "failed", view
            assert view.outcome and f"gave up after {MAX_RETRIES + 1} attempts" in view.outcome
            assert "HTTP 500" in view.outcome
            assert len(requests) == MAX_RETRIES + 1
        else:
            assert view.state == "done", (name, view)
            assert len(requests) == len(faults) + 1, (name, len(requests))
        assert stack.fake.pending_faults(job) == max(0, len(faults) - len(requests))
        _assert_backoff(name, faults, requests)

    # Connection refused: the API is down for a stretch while an event polls it.
    stack.fake.stop()
    assert cli.main(["job-finished", refused]) == 0
    stack.wait(lambda: (v := stack.event(refused)) is not None and v.attempts >= 3, 30, "retries")
    stack.fake.start()  # back on the same port, with the same jobs
    view = stack.wait_ended([refused], 60)[refused]
    assert view.state == "done" and view.attempts <= MAX_RETRIES + 1, view
    assert stack.fake.requests(refused) == 1  # the refused attempts never reached it
    # The event that never recovered registered nothing: one version per recovered job.
    recovered = [job for name, job in jobs.items() if name != "never-recovers"] + [refused]
    assert len(stack.versions(slug)) == len(recovered)
    stack.check(accepted=[*jobs.values(), refused])


def _assert_backoff(name: str, faults: list[tuple[Any, ...]], requests: list[float]) -> None:
    """Each retry waited at least the backoff (jitter 0.8x at worst), or the Retry-After."""
    for retry, (fault, (sent, next_sent)) in enumerate(
        zip(faults, itertools.pairwise(requests), strict=False)
    ):
        least = 0.8 * min(POLL * 2.0**retry, POLL_MAX)
        if fault[0] == "429":
            least = max(least, float(fault[1]))
        if fault[0] == "slow":
            least += CLIENT_TIMEOUT  # the client gave up after its timeout first
        gap = next_sent - sent
        assert gap >= least - SLACK, f"{name}: retry {retry + 1} after {gap:.3f}s < {least:.3f}s"


# -- one fault at a time --------------------------------------------------------------------------

ONE_FAULT_CLIENT_TIMEOUT = 1.0  # seconds the worker's SDK client waits for a reply
ONE_FAULT_MAX_RETRIES = 4


@pytest.fixture
def polling(stack: FaultStack) -> Iterator[FaultStack]:
    """The stack with one worker whose client waits ONE_FAULT_CLIENT_TIMEOUT and which retries an
    event ONE_FAULT_MAX_RETRIES times."""
    stack.worker(
        env={
            "FTDEPLOY_OPENAI_TIMEOUT_SECONDS": str(ONE_FAULT_CLIENT_TIMEOUT),
            "FTDEPLOY_MAX_RETRIES": str(ONE_FAULT_MAX_RETRIES),
        }
    )
    yield stack


def start_job(stack: FaultStack, name: str, *faults: tuple[object, ...]) -> str:
    """A tenant `name` (immediate, no evaluation) and its succeeded job with `faults` queued."""
    assert cli.main(["tenant", "add", name, "--no-require-evaluation"]) == 0
    job = f"ftjob-{name}"
    stack.fake.add_job(job, statuses=("succeeded",), tenant=name)
    stack.fake.inject(job, *faults)  # type: ignore[arg-type]
    assert cli.main(["job-finished", job]) == 0
    return job


TRANSIENT = {
    "http-500": [("500",), ("500",)],
    "http-503": [("503",)],
    "slow-reply": [("slow", 3 * ONE_FAULT_CLIENT_TIMEOUT)],  # beyond the client's timeout
    "dropped-connection": [("drop",)],
    "malformed-json": [("malformed", "json")],
    "malformed-html": [("malformed", "text")],
    "malformed-shape": [("malformed", "shape")],
    "malformed-id": [("malformed", "id")],
    "malformed-status": [("malformed", "status")],
    # The job read passes (a 0 s delay); the result file download fails once.
    "result-file-500": [("slow", 0), ("500",)],
}


@pytest.mark.parametrize("case", sorted(TRANSIENT))
def test_transient_fault_is_retried_until_the_job_deploys(polling: FaultStack, case: str) -> None:
    stack = polling
    job = start_job(stack, case, *TRANSIENT[case])
    event = stack.wait_event_ended(job)
    assert event.state == "done", event
    assert stack.split(case) == {1: 100}
    assert stack.fake.pending_faults(job) == 0  # every fault was met, and survived
    assert event.attempts == len(TRANSIENT[case]) + (0 if case == "result-file-500" else 1)
    run = stack.run(job)
    assert run is not None and run.result_metrics  # the result file was read in the end
    stack.check(accepted=[job])


def test_429_is_retried_no_sooner_than_retry_after(polling: FaultStack) -> None:
    stack, wait = polling, 1.5
    job = start_job(stack, "rate-limited", ("429", wait))
    arrivals = []
    for count in (1, 2):
        stack.wait(lambda n=count: stack.fake.requests(job) >= n, 30, f"request {count}")
        arrivals.append(time.monotonic())
    assert stack.wait_event_ended(job).state == "done"
    assert stack.split("rate-limited") == {1: 100}
    # Without Retry-After the first backoff here is ~0.2 s; with it, at least `wait` (the margin
    # covers this thread noticing the first request late).
    assert arrivals[1] - arrivals[0] >= wait - 0.3
    stack.check(accepted=[job])


@pytest.mark.parametrize("status", ["400", "401", "404"])
def test_permanent_fault_fails_the_event_at_once_with_the_reason(
    polling: FaultStack, status: str
) -> None:
    stack = polling
    job = start_job(stack, f"perm-{status}", (status,))
    event = stack.wait_event_ended(job)
    assert event.state == "failed"
    assert event.outcome is not None and f"HTTP {status}" in event.outcome
    assert stack.fake.requests(job) == 1  # not retried
    assert stack.run(job) is None and stack.versions(f"perm-{status}") == []
    # OpenAI echoes a masked key in a 401; neither it nor the key reaches the database or logs.
    key = stack.env["OPENAI_API_KEY"]
    assert key not in event.outcome and key[-4:] not in event.outcome
    assert key not in stack.logs()
    stack.check(accepted=[job])
