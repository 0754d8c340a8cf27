"""Every fault the fake OpenAI can inject, end to end: a real worker over Redis and PostgreSQL
polls through the real openai SDK; transient faults are retried until the job deploys, permanent
ones end the event as failed with the reason, and bounded retries give up with the reason too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.worker.e2e_stack import Stack, e2e_stack
from worker import cli

pytestmark = pytest.mark.e2e

CLIENT_TIMEOUT = 1.0  # seconds the worker's SDK client waits for a reply
MAX_RETRIES = 4


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with e2e_stack(
        request,
        tmp_path_factory.mktemp("faults"),
        openai_timeout_seconds=CLIENT_TIMEOUT,
        max_retries=MAX_RETRIES,
    ) as stack:
        stack.start_worker()
        yield stack


def start_job(stack: Stack, name: str, *faults: tuple[object, ...]) -> str:
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
    "slow-reply": [("slow", 3 * CLIENT_TIMEOUT)],  # beyond the client's timeout
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
def test_transient_fault_is_retried_until_the_job_deploys(stack: Stack, case: str) -> None:
    job = start_job(stack, case, *TRANSIENT[case])
    event = stack.wait_event_ended(job)
    assert event.state == "done", event
    assert stack.split(case) == {1: 100}
    assert stack.fake.pending_faults(job) == 0  # every fault was met, and survived
    assert event.attempts == len(TRANSIENT[case]) + (0 if case == "result-file-500" else 1)
    run = stack.run(job)
    assert run is not None and run.result_metrics  # the result file was read in the end


def test_429_is_retried_no_sooner_than_retry_after(stack: Stack) -> None:
    wait = 1.5
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


@pytest.mark.parametrize("status", ["400", "401", "404"])
def test_permanent_fault_fails_the_event_at_once_with_the_reason(stack: Stack, status: str) -> None:
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


def test_a_fault_that_persists_gives_up_after_bounded_retries(stack: Stack) -> None:
    job = start_job(stack, "always-500", *[("500",)] * (MAX_RETRIES + 3))
    event = stack.wait_event_ended(job, timeout=60)
    assert event.state == "failed"
    assert event.outcome is not None
    assert f"gave up after {MAX_RETRIES + 1} attempts" in event.outcome
    assert "HTTP 500" in event.outcome
    assert stack.fake.requests(job) == MAX_RETRIES + 1
    assert stack.versions("always-500") == []
