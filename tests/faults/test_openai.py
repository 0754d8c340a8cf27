"""OpenAI misbehaving for long stretches — 429 with Retry-After, 500s, timeouts, refused
connections, malformed bodies — while several events wait on it: every retry is bounded and
spaced by the backoff, and every event ends succeeded or recorded as failed with its reason."""

from __future__ import annotations

import itertools
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
