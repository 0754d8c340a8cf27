"""Notifications end to end: a real worker with beat over Redis and PostgreSQL, the fake OpenAI,
and a receiving server on loopback that verifies every signature with `standardwebhooks`.

Retries are fast here (0.5 s, 1 s, 1 s, 2 s, …), requests time out after 2 s, and beat's
reconciler runs every second.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from registry import versions
from registry.db import unit_of_work
from tests.worker.e2e_stack import Stack, e2e_stack
from tests.worker.notify_receiver import Receiver, receiver
from worker import cli, tasks

pytestmark = pytest.mark.e2e

CANARY = [
    "--strategy", "canary", "--steps", "50,100", "--auto-promote", "--threshold", "0.9",
    "--min-samples", "20", "--bake-seconds", "1", "--deadline-seconds", "60",
    "--no-require-evaluation",
]  # fmt: skip


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("notify")
    with e2e_stack(
        request,
        tmp,
        outcome_bucket_seconds=1,
        notify_encryption_key="e2e-notify-key",
        notify_retry_schedule_seconds="0.5,1,1,2,2,2,2,2,2,2,2,2",
        notify_timeout_seconds=2,
        public_url="http://ftdeploy.test",
    ) as stack:
        stack.start_worker("w1", beat=True)
        yield stack


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    code = cli.main([*argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def endpoint(
    capsys: pytest.CaptureFixture[str], server: Receiver, name: str, tenant: str, *extra: str
) -> None:
    added = cli_json(capsys, "notify", "add", name, "--url", server.url, "--tenant", tenant, *extra)
    server.secret = added["secret"]


def deploy(stack: Stack, tenant: str, job_id: str) -> None:
    stack.fake.add_job(job_id, statuses=("succeeded",), tenant=tenant)
    assert cli.main(["job-finished", job_id]) == 0
    assert stack.wait_event_ended(job_id, 60).state == "done"


def arrived(stack: Stack, server: Receiver, count: int, timeout: float = 60) -> list[Any]:
    return stack.wait(
        lambda: server.unique() if len(server.unique()) >= count else None,
        timeout,
        f"{count} notifications at the receiver (have {[r.type for r in server.unique()]})",
    )


def feed(stack: Stack, tenant: str, version: int, success: bool, until: Any) -> None:
    """Report outcomes of `version` as a serving app would, until `until()` holds."""
    with unit_of_work(stack.database_url) as session:
        model = {v.version: v.model_id for v in versions.list_versions(session, tenant)}[version]
    deadline = time.monotonic() + 60
    while not until():
        assert time.monotonic() < deadline, f"timed out feeding {tenant} v{version}\n{stack.logs()}"
        batch = [{"tenant": tenant, "model": model, "success": success, "count": 10}]
        tasks.record_outcomes.apply_async(args=(batch,))
        time.sleep(0.3)


def test_deploy_promotion_and_rollback_arrive_signed_in_order(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tenant", "add", "story", *CANARY]) == 0
    with receiver() as server:
        endpoint(capsys, server, "story-hook", "story")
        deploy(stack, "story", "ftjob-story-1")  # nothing serves: v1 takes 100%
        deploy(stack, "story", "ftjob-story-2")  # v2 canary at 50%
        feed(stack, "story", 2, True, lambda: stack.split("story") == {2: 100})
        deploy(stack, "story", "ftjob-story-3")
        feed(stack, "story", 3, False, lambda: stack.split("story") == {2: 100})
        got = arrived(stack, server, 5)

    assert all(r.verified for r in server.requests)
    assert [r.type for r in got] == [
        "deployment.applied",
        "deployment.applied",
        "canary.promoted",
        "deployment.applied",
        "canary.rolled_back",
    ]
    assert [r.data["sequence"] for r in got] == [1, 2, 3, 4, 5]
    for request in got:
        assert request.data["tenant"]["slug"] == "story"
        assert request.headers["webhook-signature"].startswith("v1,")
        assert request.body["timestamp"]
    first, canary, promoted, third, rolled = (r.data for r in got)
    assert first["split_before"] == {} and first["split_after"] == {"1": 100}
    assert canary["split_after"] == {"1": 50, "2": 50} and canary["traffic_percent"] == 50
    assert promoted["split_before"] == {"1": 50, "2": 50}
    assert promoted["split_after"] == {"2": 100}
    assert promoted["actor"] == "auto" and "meets 0.9" in promoted["reason"]
    assert promoted["decision"]["canary"]["requests"] >= 20
    assert promoted["decision"]["bounds_95"]["upper"] == 1.0
    assert third["version"] == 3 and third["split_after"] == {"2": 50, "3": 50}
    assert rolled["version"] == 3 and rolled["split_after"] == {"2": 100}
    assert rolled["decision"]["canary"]["successes"] == 0
    assert "clearly failing" in rolled["reason"]


def test_a_receiver_that_fails_then_recovers_gets_it_once_with_one_id(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tenant", "add", "flaky", "--no-require-evaluation"]) == 0
    with receiver() as server:
        server.answer(500, 500, 503)
        endpoint(capsys, server, "flaky-hook", "flaky")
        deploy(stack, "flaky", "ftjob-flaky-1")
        [delivered] = arrived(stack, server, 1)
        stack.wait(lambda: len(server.requests) >= 4, 30, "the fourth attempt")
        time.sleep(1.5)  # nothing more comes once it was answered 200
    assert len(server.requests) == 4
    assert {r.webhook_id for r in server.requests} == {delivered.webhook_id}
    [row] = cli_json(capsys, "notify", "deliveries", "flaky-hook")
    assert row["status"] == "delivered" and row["attempts"] == 4
    assert [a["status_code"] for a in row["history"]] == [500, 500, 503, 200]
    assert row["webhook_id"] == delivered.webhook_id


def test_a_receiver_down_for_the_first_half_gets_everything_in_order(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tenant", "add", "down", "--no-require-evaluation"]) == 0
    with receiver(start=False) as server:
        endpoint(capsys, server, "down-hook", "down")
        deploy(stack, "down", "ftjob-down-1")
        deploy(stack, "down", "ftjob-down-2")
        stack.wait(
            lambda: any(
                r["attempts"] >= 2 for r in cli_json(capsys, "notify", "deliveries", "down-hook")
            ),
            30,
            "attempts at the receiver that is down",
        )
        rows = cli_json(capsys, "notify", "deliveries", "down-hook")
        # The first waits for its retry; the second has not been tried: it is behind the first.
        by_seq = {r["seq"]: r for r in rows}
        assert by_seq[1]["status"] == "pending" and by_seq[1]["next_attempt_at"]
        assert by_seq[1]["history"][0]["status_code"] is None
        assert by_seq[2]["attempts"] == 0
        [listed] = [e for e in cli_json(capsys, "notify", "list") if e["name"] == "down-hook"]
        assert listed["pending"] == 2 and listed["failing_since"]
        server.start()
        got = arrived(stack, server, 2)
    assert [r.data["version"] for r in got] == [1, 2]
    assert [r.data["sequence"] for r in got] == [1, 2]


def test_410_disables_the_endpoint(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tenant", "add", "gone", "--no-require-evaluation"]) == 0
    with receiver() as server:
        server.gone()
        endpoint(capsys, server, "gone-hook", "gone")
        deploy(stack, "gone", "ftjob-gone-1")

        def disabled() -> dict[str, Any] | None:
            rows = cli_json(capsys, "notify", "list", "--tenant", "gone")
            row = next(e for e in rows if e["name"] == "gone-hook")
            return row if not row["enabled"] else None

        row = stack.wait(disabled, 30, "the endpoint to be disabled")
        assert "410" in row["disabled_reason"]
        deploy(stack, "gone", "ftjob-gone-2")
        time.sleep(2)
    assert len(server.requests) == 1  # nothing more after the 410
    code = cli.main(["notify", "list"])
    out = capsys.readouterr().out
    assert code == 0 and "DISABLED" in out and server.secret not in out


def test_a_receiver_that_never_answers_does_not_hold_up_job_events(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tenant", "add", "hangs", "--no-require-evaluation"]) == 0
    assert cli.main(["tenant", "add", "busy", "--no-require-evaluation"]) == 0
    with receiver() as server:
        server.hang()
        endpoint(capsys, server, "hangs-hook", "hangs")
        for n in range(3):
            stack.fake.add_job(f"ftjob-hangs-{n}", statuses=("succeeded",), tenant="hangs")
            assert cli.main(["job-finished", f"ftjob-hangs-{n}"]) == 0
        stack.wait(lambda: server.requests, 30, "the first request to the hanging receiver")
        started = time.monotonic()
        jobs = [f"ftjob-busy-{n}" for n in range(4)]
        for job in jobs:
            stack.fake.add_job(job, statuses=("succeeded",), tenant="busy")
            assert cli.main(["job-finished", job]) == 0
        for job in jobs:
            assert stack.wait_event_ended(job, 30).state == "done"
        took = time.monotonic() - started

        def timed_out() -> bool:
            rows = cli_json(capsys, "notify", "deliveries", "hangs-hook")
            return any("timeout" in (a["error"] or "") for r in rows for a in r["history"])

        stack.wait(timed_out, 30, "an attempt at the hanging receiver to time out")
    # Each hung request costs one process 2 s at most; the other keeps handling job events.
    assert took < 10, f"job events took {took:.1f} s behind a hanging receiver"
    for n in range(3):
        assert stack.event(f"ftjob-hangs-{n}").state == "done"  # type: ignore[union-attr]


def test_bad_input_at_the_cli_is_refused_in_one_line(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tenant", "add", "badin", "--no-require-evaluation"]) == 0
    ok = ["notify", "add", "badin-hook", "--url", "https://example.com/h", "--tenant", "badin"]
    assert cli.main(ok) == 0
    capsys.readouterr()
    cases = [
        (["notify", "add", "x1", "--url", "ftp://example.com/h"], 2, "scheme 'ftp'"),
        (["notify", "add", "x2", "--url", "example.com/h"], 2, "scheme 'none'"),
        (["notify", "add", "x3", "--url", "https://e.com/", "--events", "canary.exploded"], 2,
         "invalid event type: 'canary.exploded'"),
        (["notify", "add", "x4", "--url", "https://e.com/", "--format", "teams"], 2, "format"),
        (["notify", "add", "badin-hook", "--url", "https://e.com/", "--tenant", "badin"], 1,
         "already exists"),  # names are unique per owner: the same tenant's
        (["notify", "add", "x5", "--url", "https://e.com/", "--tenant", "nobody"], 3, "nobody"),
        (["notify", "remove", "nope"], 3, "not found: 'nope'"),
        (["notify", "deliveries", "nope"], 3, "not found: 'nope'"),
        (["notify", "replay", "nope"], 3, "not found: 'nope'"),
        (["notify", "replay", "badin-hook", "--since", "yesterday"], 2, "invalid since"),
        (["notify", "replay", "badin-hook", "--event", "nope"], 2, "invalid event"),
        (["notify", "replay", "badin-hook", "--event", str(uuid.uuid4())], 3, "no notification"),
        (["notify", "disable", "badin-hook", "--reason", "x" * 501], 2, "invalid reason"),
        (["notify", "disable", "badin-hook"], 0, ""),
        (["notify", "replay", "badin-hook"], 1, "is disabled (disabled by"),
    ]  # fmt: skip
    for argv, code, text in cases:
        assert cli.main(argv) == code, argv
        captured = capsys.readouterr()
        if code == 0:
            assert "disabled badin-hook" in captured.out
            continue
        err = captured.err
        assert err.count("\n") == 1 and text in err, (argv, err)
        assert "example.com" not in err
    names = [e["name"] for e in cli_json(capsys, "notify", "list")]
    assert not {"x1", "x2", "x3", "x4", "x5"} & set(names)


def test_replay_sends_what_failed_and_what_was_missed_in_order_with_the_same_ids(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tenant", "add", "again", "--no-require-evaluation"]) == 0
    with receiver() as server:
        server.answer(400, 400)  # the first two are refused: given up at once
        endpoint(capsys, server, "again-hook", "again")
        assert cli.main(["tenant", "pause", "again", "--reason", "one"]) == 0
        assert cli.main(["tenant", "resume", "again"]) == 0

        def failed() -> list[Any] | None:
            rows = cli_json(capsys, "notify", "deliveries", "again-hook", "--status", "failed")
            return rows if len(rows) == 2 else None

        first, second = sorted(stack.wait(failed, 30, "two refused deliveries"), key=seq)
        assert cli.main(["notify", "disable", "again-hook", "--reason", "receiver moving"]) == 0
        assert cli.main(["tenant", "pause", "again", "--reason", "three"]) == 0  # missed
        capsys.readouterr()
        assert cli.main(["notify", "replay", "again-hook"]) == 1
        assert "enable it, then replay" in capsys.readouterr().err
        assert cli.main(["notify", "enable", "again-hook"]) == 0

        one = cli_json(capsys, "notify", "replay", "again-hook", "--event", first["webhook_id"])
        assert one == {
            "name": "again-hook",
            "requeued": 1,
            "missed": 0,
            "webhook_ids": [first["webhook_id"]],
        }
        stack.wait(lambda: len(server.requests) == 3, 30, "the one replayed event")
        rest = cli_json(capsys, "notify", "replay", "again-hook", "--since", "1h")
        assert rest["requeued"] == 1 and rest["missed"] == 1
        stack.wait(lambda: len(server.requests) == 5, 30, "the other two replayed")
        time.sleep(1)  # and nothing more
    assert len(server.requests) == 5 and all(r.verified for r in server.requests)
    refused, replayed = server.requests[:2], server.requests[2:]
    assert [r.webhook_id for r in refused] == [first["webhook_id"], second["webhook_id"]]
    # The same ids again (receivers deduplicate), then what it missed, in sequence order.
    assert [r.webhook_id for r in replayed[:2]] == [first["webhook_id"], second["webhook_id"]]
    assert [r.type for r in replayed] == ["tenant.paused", "tenant.resumed", "tenant.paused"]
    sequences = [r.data["sequence"] for r in replayed]
    assert sequences == sorted(sequences) and len(set(sequences)) == 3
    rows = {r["webhook_id"]: r for r in cli_json(capsys, "notify", "deliveries", "again-hook")}
    assert all(r["status"] == "delivered" for r in rows.values()) and len(rows) == 3
    assert [a["status_code"] for a in rows[first["webhook_id"]]["history"]] == [400, 200]
    assert cli_json(capsys, "notify", "replay", "again-hook")["webhook_ids"] == []


def seq(row: dict[str, Any]) -> int:
    return int(row["seq"])
