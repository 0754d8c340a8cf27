"""From "job finished" to serving traffic, end to end: a real Celery worker over Redis, PostgreSQL,
and the real openai SDK against the fake OpenAI, driven through the `ftdeploy` CLI.

One worker serves the module; each test has its own tenants and job ids.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from registry.models import Deployment, ModelVersion, Operation, TrafficEvent
from tests.worker.e2e_stack import Stack, e2e_stack
from worker import cli
from worker.demo.fake_openai import DEFAULT_METRICS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with e2e_stack(request, tmp_path_factory.mktemp("pipeline")) as stack:
        # Four processes, so the duplicate-delivery test really runs deliveries side by side.
        stack.start_worker(concurrency=4)
        yield stack


def add_tenant(slug: str, *options: str) -> None:
    assert cli.main(["tenant", "add", slug, *options]) == 0


def publish(job_id: str, tenant: str | None = None) -> None:
    assert cli.main(["job-finished", job_id, *(["--tenant", tenant] if tenant else [])]) == 0


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    capsys.readouterr()
    code = cli.main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_immediate_strategy_takes_each_version_to_100(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    add_tenant("imm", "--strategy", "immediate", "--no-require-evaluation")
    for n in (1, 2):
        stack.fake.add_job(f"ftjob-imm-{n}", statuses=("succeeded",), tenant="imm")
        publish(f"ftjob-imm-{n}")
        assert stack.wait_event_ended(f"ftjob-imm-{n}").state == "done"
        assert stack.split("imm") == {n: 100}

    assert stack.versions("imm") == [(1, "deprecated", 0), (2, "production", 100)]
    code, listed = cli_json(capsys, "versions", "imm")
    assert code == 0 and isinstance(listed, list)
    newest = listed[0]
    run = stack.run("ftjob-imm-2")
    assert run is not None and run.status == "succeeded" and run.fine_tuned_model
    assert newest["version"] == 2 and newest["model_id"] == run.fine_tuned_model
    assert run.result_metrics == dict(DEFAULT_METRICS)  # the final row of the result file
    assert stack.audit_actions("imm") == [("deploy", 1), ("deploy", 2)]


def test_canary_strategy_starts_the_new_version_at_its_percent(stack: Stack) -> None:
    add_tenant("can", "--strategy", "canary", "--canary-percent", "25", "--no-require-evaluation")
    stack.fake.add_job("ftjob-can-1", statuses=("succeeded",), tenant="can")
    publish("ftjob-can-1")
    stack.wait_event_ended("ftjob-can-1")
    # Nothing else serves: the first version takes everything, and says why.
    assert stack.split("can") == {1: 100}
    first = stack.deployment("ftjob-can-1")
    assert first is not None and first.initial_traffic == 100
    assert first.reason is not None and "takes all traffic" in first.reason

    stack.fake.add_job("ftjob-can-2", statuses=("succeeded",), tenant="can")
    publish("ftjob-can-2")
    stack.wait_event_ended("ftjob-can-2")
    assert stack.split("can") == {1: 75, 2: 25}
    second = stack.deployment("ftjob-can-2")
    assert second is not None
    assert (second.status, second.initial_traffic) == ("active", 25)


def test_blue_green_stages_at_zero_until_an_operator_switches(stack: Stack) -> None:
    add_tenant("bg", "--strategy", "blue_green", "--no-require-evaluation")
    for n in (1, 2):
        stack.fake.add_job(f"ftjob-bg-{n}", statuses=("succeeded",), tenant="bg")
        publish(f"ftjob-bg-{n}")
        assert stack.wait_event_ended(f"ftjob-bg-{n}").state == "done"
        deployment = stack.deployment(f"ftjob-bg-{n}")
        assert deployment is not None and deployment.status == "staged"
        assert stack.versions("bg")[-1] == (n, "staging", 0)
        assert stack.split("bg") == ({} if n == 1 else {1: 100})  # staged, not serving
        assert cli.main(["promote", "bg", str(n), "--wait", "--timeout", "30"]) == 0
        assert stack.split("bg") == {n: 100}


def test_a_job_that_needs_several_polls(stack: Stack) -> None:
    add_tenant("polls", "--no-require-evaluation")
    statuses = ("validating_files", "queued", "running", "running", "succeeded")
    stack.fake.add_job("ftjob-polls-1", statuses=statuses, tenant="polls", trained_tokens=4321)
    publish("ftjob-polls-1")
    event = stack.wait_event_ended("ftjob-polls-1")
    assert event.state == "done"
    assert stack.fake.requests("ftjob-polls-1") == len(statuses)
    assert event.attempts == len(statuses)  # one attempt per poll, each retried later
    run = stack.run("ftjob-polls-1")
    assert run is not None and (run.status, run.trained_tokens) == ("succeeded", 4321)
    assert stack.split("polls") == {1: 100}


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_failed_or_cancelled_job_records_the_run_and_deploys_nothing(
    stack: Stack, status: str
) -> None:
    tenant, job = f"end-{status}", f"ftjob-end-{status}"
    add_tenant(tenant, "--no-require-evaluation")
    stack.fake.add_job(job, statuses=("running", status), tenant=tenant)
    publish(job)
    event = stack.wait_event_ended(job)
    assert event.state == "done"
    assert event.outcome is not None and f"job {status}" in event.outcome
    assert "nothing deployed" in event.outcome
    run = stack.run(job)
    assert run is not None and run.status == status and run.fine_tuned_model is None
    if status == "failed":
        assert run.error is not None and run.error.startswith("invalid_training_file")
        assert "invalid_training_file" in event.outcome  # the reason is kept on the event
    assert stack.deployment(job) is None
    assert stack.versions(tenant) == []


def test_rejected_evaluation_deploys_nothing_and_keeps_the_reason(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    add_tenant("rej")  # evaluation required (the default)
    stack.fake.add_job("ftjob-rej-1", statuses=("succeeded",), tenant="rej")
    publish("ftjob-rej-1")
    stack.wait_event_ended("ftjob-rej-1")
    record = ["evaluation", "record", "ftjob-rej-1", "--recommendation", "reject"]
    assert cli.main([*record, "--metric", "f1=0.3"]) == 0

    def rejected() -> Deployment | None:
        deployment = stack.deployment("ftjob-rej-1")
        return deployment if deployment is not None and deployment.status == "rejected" else None

    deployment = stack.wait(rejected, 30, "the deployment to be rejected")
    assert deployment.reason is not None and "recommends reject" in deployment.reason
    assert deployment.version_id is None
    assert cli_json(capsys, "versions", "rej") == (0, [])


def test_missing_evaluation_waits_then_deploys_when_one_is_recorded(stack: Stack) -> None:
    add_tenant("wait", "--strategy", "immediate")
    stack.fake.add_job("ftjob-wait-1", statuses=("succeeded",), tenant="wait")
    publish("ftjob-wait-1")
    event = stack.wait_event_ended("ftjob-wait-1")
    assert event.state == "done" and "awaiting_evaluation" in (event.outcome or "")
    waiting = stack.deployment("ftjob-wait-1")
    assert waiting is not None and waiting.status == "awaiting_evaluation"
    assert stack.versions("wait") == []

    assert cli.main(["evaluation", "record", "ftjob-wait-1", "--recommendation", "approve"]) == 0
    stack.wait(lambda: stack.split("wait") == {1: 100}, 30, "the waiting deployment to resume")
    resumed = stack.deployment("ftjob-wait-1")
    assert resumed is not None and resumed.status == "promoted"


def test_tenant_disagreement_fails_the_event_and_deploys_nothing(stack: Stack) -> None:
    add_tenant("owner", "--no-require-evaluation")
    add_tenant("claimant", "--no-require-evaluation")
    stack.fake.add_job("ftjob-mismatch-1", statuses=("succeeded",), tenant="owner")
    publish("ftjob-mismatch-1", tenant="claimant")
    event = stack.wait_event_ended("ftjob-mismatch-1")
    assert event.state == "failed"
    assert event.outcome is not None
    assert "owner" in event.outcome and "claimant" in event.outcome
    assert stack.run("ftjob-mismatch-1") is None
    assert stack.versions("owner") == [] and stack.versions("claimant") == []


def test_the_same_event_delivered_five_times_at_once_makes_one_version(stack: Stack) -> None:
    from worker.tasks import job_finished

    add_tenant("dup", "--no-require-evaluation")
    stack.fake.add_job("ftjob-dup-1", statuses=("succeeded",), tenant="dup")
    # Every delivery's first request is held half a second, so they overlap inside the worker.
    stack.fake.inject("ftjob-dup-1", *[("slow", 0.5)] * 5)
    task_ids: list[str] = []
    barrier = threading.Barrier(5)

    def deliver() -> None:
        barrier.wait()
        task_ids.append(job_finished.apply_async(args=("ftjob-dup-1",)).id)

    threads = [threading.Thread(target=deliver) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    worker = stack.workers[0]

    def all_handled() -> bool:
        log = worker.log_path.read_text(errors="replace")
        return all(f"job_finished[{task_id}] succeeded" in log for task_id in task_ids)

    stack.wait(all_handled, 30, "all five deliveries to be handled")
    event = stack.event("ftjob-dup-1")
    assert event is not None and event.state == "done", event
    # No worker died: overlapping deliveries are not crashes (three would fail the event).
    assert event.crashes == 0, event
    assert stack.versions("dup") == [(1, "production", 100)]
    assert stack.count(Deployment, "dup") == 1
    assert stack.count(ModelVersion, "dup") == 1
    assert stack.audit_actions("dup") == [("deploy", 1)]


def test_queued_promote_and_rollback_through_the_cli(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    add_tenant("ops", "--strategy", "canary", "--canary-percent", "10", "--no-require-evaluation")
    for n in (1, 2):
        stack.fake.add_job(f"ftjob-ops-{n}", statuses=("succeeded",), tenant="ops")
        publish(f"ftjob-ops-{n}")
        stack.wait_event_ended(f"ftjob-ops-{n}")
    assert stack.split("ops") == {1: 90, 2: 10}

    code, result = cli_json(capsys, "promote", "ops", "2", "--traffic", "50", "--wait")
    assert code == 0 and isinstance(result, dict)
    assert result["status"] == "succeeded" and result["result"]["after"] == {"1": 50, "2": 50}
    assert stack.split("ops") == {1: 50, 2: 50}

    assert cli.main(["promote", "ops", "v2", "--wait"]) == 0
    assert stack.split("ops") == {2: 100}
    assert cli.main(["rollback", "ops", "--wait"]) == 0
    assert stack.split("ops") == {1: 100}  # v2 rolled back, v1 restored

    # v1 is all that is left and v2 was rolled back: nothing to return to. The operation fails
    # with its reason, the exit status says so, and nothing changes.
    code, failed = cli_json(capsys, "rollback", "ops", "--wait")
    assert code != 0 and isinstance(failed, dict)
    assert failed["status"] == "failed"
    operation = stack.operation(failed["operation_id"])
    assert operation.status == "failed"
    assert operation.error is not None and "nothing to roll back" in operation.error
    assert stack.split("ops") == {1: 100}
    assert [a for a, _ in stack.audit_actions("ops")][-3:] == ["promote", "promote", "rollback"]

    # A version the tenant does not have is refused before anything is queued.
    before = stack.count(Operation, "ops")
    assert cli.main(["promote", "ops", "9", "--wait"]) == 3
    assert stack.count(Operation, "ops") == before
    assert stack.count(TrafficEvent, "ops") == 5
