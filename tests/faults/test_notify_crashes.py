"""Notifications when the worker dies: between the commit and the send of the delivery task, and
after a receiver got a notification but before it was recorded. Delivered all the same, in
order; the receiver sees one id twice at most and deduplicates on webhook-id."""

from __future__ import annotations

import json

import pytest

from registry.settings import get_settings
from tests.faults.conftest import FaultStack
from tests.harness import WorkerProcess
from tests.worker.notify_receiver import receiver
from worker import cli

pytestmark = pytest.mark.faults

NOTIFY = {
    "FTDEPLOY_NOTIFY_ENCRYPTION_KEY": "faults-notify-key",
    "FTDEPLOY_NOTIFY_RETRY_SCHEDULE_SECONDS": "0.5,1,1,1,1,1,1,1",
}


def _worker(stack: FaultStack, points: str, monkeypatch: pytest.MonkeyPatch) -> WorkerProcess:
    for key, value in NOTIFY.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    env = {**stack.env, **NOTIFY, "FTDEPLOY_FAULT_NOTIFY": points}
    process = WorkerProcess(
        env, stack.tmp / "notify.log", name="wn", beat=True, app="tests.faults.notify_fault_app"
    )
    stack.workers.append(process)
    return process.start(timeout=60)


@pytest.mark.parametrize("point", ["after_commit", "after_send"])
def test_a_worker_killed_around_the_send_still_delivers_in_order(
    stack: FaultStack,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    point: str,
) -> None:
    _worker(stack, point, monkeypatch)
    slug = f"crash-{point.replace('_', '-')}"
    assert cli.main(["tenant", "add", slug, "--no-require-evaluation"]) == 0
    jobs = [f"ftjob-{slug}-{n}" for n in range(3)]
    with receiver() as server:
        capsys.readouterr()
        assert (
            cli.main(
                ["notify", "add", f"{slug}-hook", "--url", server.url, "--tenant", slug, "--json"]
            )
            == 0
        )
        server.secret = json.loads(capsys.readouterr().out)["secret"]
        for job in jobs:
            stack.fake.add_job(job, statuses=("succeeded",), tenant=slug)
            assert cli.main(["job-finished", job]) == 0
        assert {j: v.state for j, v in stack.wait_ended(jobs, 60).items()} == dict.fromkeys(
            jobs, "done"
        )
        # Beat's reconciler picks up what the dead process left (its lease runs out first).
        stack.wait(lambda: len(server.unique()) >= 3, 60, "three notifications")
    assert (stack.tmp / "data" / f"crashed-notify-{point}").exists()
    assert all(r.verified for r in server.requests)
    unique = server.unique()
    assert [r.data["sequence"] for r in unique] == [1, 2, 3]
    assert [r.data["version"] for r in unique] == [1, 2, 3]
    ids = [r.webhook_id for r in server.requests]
    assert max(ids.count(i) for i in ids) <= 2
    if point == "after_send":
        assert len(ids) == 4  # one was received, not recorded, and sent again (same id)
    stack.check(accepted=jobs)
