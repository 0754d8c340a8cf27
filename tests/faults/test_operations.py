"""Operators' queued operations under faults: a worker killed while it holds one, then a newer
operation; the broker down when one is queued; PostgreSQL down for longer than every retry of
the tasks. Each accepted operation (and event) ends in a final state with its reason, and an old
decision never overrides a newer one.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from sqlalchemy import select

from registry import clock
from registry.db import unit_of_work
from registry.models import FINAL_OPERATION_STATUSES, Operation, OperationStatus
from registry.settings import get_settings
from tests import services
from tests.factories import deploy_new, make_tenant
from tests.faults.conftest import FaultStack
from tests.worker.cli_support import run
from worker.cli import output

pytestmark = pytest.mark.faults


def _canary(stack: FaultStack, slug: str) -> None:
    """A tenant whose v2 is a canary on 10% of the traffic: v1:90% v2:10%."""
    with unit_of_work(stack.database_url) as session:
        tenant = make_tenant(
            session, slug, strategy="canary", canary_percent=10, require_evaluation=False
        )
        deploy_new(session, tenant)
        deploy_new(session, tenant)


def _queued_id(stack: FaultStack, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, ""), (code, err)
    return out.strip()


def _ended(stack: FaultStack, operation_id: str) -> Operation | None:
    operation = stack.operation(operation_id)
    return operation if operation.status in FINAL_OPERATION_STATUSES else None


def _drained(stack: FaultStack) -> bool:
    broker = redis.Redis.from_url(stack.broker_url)
    try:
        return broker.llen("ftdeploy") == 0 and broker.hlen("unacked") == 0
    finally:
        broker.close()


# The worker that holds the promotion: a time limit far above the test's few seconds of hold.
HOLDING = {"FTDEPLOY_TASK_TIME_LIMIT_SECONDS": "30", "FTDEPLOY_VISIBILITY_TIMEOUT_SECONDS": "32"}
# The worker that takes over restores the dead worker's message after this long, enough for
# it to start and for the operator's rollback to land first.
TAKING_OVER = {"FTDEPLOY_VISIBILITY_TIMEOUT_SECONDS": "20"}


def test_worker_killed_holding_an_operation_then_a_newer_one(
    stack: FaultStack, capsys: pytest.CaptureFixture[str]
) -> None:
    slug = "held"
    _canary(stack, slug)
    first = stack.worker("w1", crash={slug: "hold_operation"}, env=HOLDING, concurrency=1)
    promote = _queued_id(stack, capsys, "promote", slug, "2", "--traffic", "30")
    held = stack.tmp / "data" / f"held-operation-{slug}"
    stack.wait(held.exists, 30, "w1 to hold the promotion under the tenant's lock")
    # w1 holds the operation's row: the operator cannot cancel a running operation.
    code, _, err = run(capsys, "operations", "cancel", promote)
    assert code != 0 and "running" in err, err
    first.kill()  # SIGKILL: the transaction is rolled back, the message stays unacknowledged
    assert stack.operation(promote).status == OperationStatus.QUEUED

    stack.worker("w2", env=TAKING_OVER)
    # The operator decides anew: a rollback, run by w2 while the promotion's message waits.
    rollback = _queued_id(stack, capsys, "rollback", slug, "--reason", "canary looks bad")
    done = stack.wait(lambda: _ended(stack, rollback), 30, "the rollback to end")
    assert done.status == OperationStatus.SUCCEEDED, done.error
    assert stack.split(slug) == {1: 100}
    assert stack.operation(promote).status == OperationStatus.QUEUED

    # The visibility timeout passes; w2 gets the promotion's message again, and refuses it.
    old = stack.wait(lambda: _ended(stack, promote), 45, "the redelivered promotion to end")
    assert old.status == OperationStatus.STALE, (old.status, old.error)
    assert old.error is not None and old.error.startswith("stale: ")
    assert "v1:90% v2:10% -> v1:100%" in old.error and "rollback" in old.error
    assert old.finished_at is not None and done.finished_at is not None
    assert old.finished_at > done.finished_at
    assert stack.split(slug) == {1: 100}  # the newer decision stands
    stack.wait(lambda: _drained(stack), 30, "the broker to hold nothing more")
    stack.check()


def test_broker_down_when_operations_are_queued(
    stack_on_own_redis: FaultStack,
    own_redis: services.Service,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stack = stack_on_own_redis
    _canary(stack, "patient")
    _canary(stack, "hurried")
    with own_redis.down():
        code, out, err = run(capsys, "promote", "patient", "2", "--traffic", "30")
        assert code == output.NOT_SENT and out == "" and len(err.splitlines()) == 1, err
        assert "broker is unavailable" in err and "Traceback" not in err
        patient = _id_in(err)
        # The same while an operation's time to live is short: it runs out before the broker
        # is back.
        monkeypatch.setenv("FTDEPLOY_OPERATION_TTL_SECONDS", "2")
        get_settings.cache_clear()
        code, out, err = run(capsys, "promote", "hurried", "2", "--traffic", "30")
        monkeypatch.delenv("FTDEPLOY_OPERATION_TTL_SECONDS")
        get_settings.cache_clear()
        assert code == output.NOT_SENT and len(err.splitlines()) == 1, err
        hurried = _id_in(err)
        for operation_id in (patient, hurried):
            stored = stack.operation(operation_id)
            assert stored.status == OperationStatus.QUEUED and stored.enqueued_at is None
        expires = stack.operation(hurried).expires_at
        assert expires is not None
        stack.wait(lambda: clock.now() > expires, 30, "the short time to live to run out")

    # The broker is back; beat's reconciler finds what was never sent.
    worker = stack.worker("w1", beat=True, env={"FTDEPLOY_RECONCILE_GRACE_SECONDS": "1"})
    sent = stack.wait(lambda: _ended(stack, patient), 45, "the unsent promotion to end")
    assert sent.status == OperationStatus.SUCCEEDED, (sent.status, sent.error)
    assert sent.enqueued_at is not None
    assert stack.split("patient") == {1: 70, 2: 30}
    late = stack.wait(lambda: _ended(stack, hurried), 45, "the expired promotion to end")
    assert late.status == OperationStatus.EXPIRED, (late.status, late.error)
    assert late.error is not None and late.error.startswith("expired: not started within")
    assert stack.split("hurried") == {1: 90, 2: 10}  # not applied
    assert "operations.reconciled" in worker.log_path.read_text(errors="replace")
    stack.check()


def _lines(log: str, *parts: str) -> int:
    """How many lines of the log hold every one of `parts`."""
    return sum(1 for line in log.splitlines() if all(part in line for part in parts))


def _id_in(line: str) -> str:
    """The operation id of the CLI's one line: `… operation ID is recorded (queued) …`."""
    return line.split("operation ", 1)[1].split()[0]


# Few, short retries: the tasks give up within seconds of an outage. Operations retry ten
# times (their task's own limit), job events FTDEPLOY_MAX_RETRIES times.
SHORT_RETRIES = {
    "FTDEPLOY_MAX_RETRIES": "3",
    "FTDEPLOY_JOB_POLL_SECONDS": "0.1",
    "FTDEPLOY_JOB_POLL_MAX_SECONDS": "1",
}
OPERATION_ATTEMPTS = 11


def test_postgres_down_longer_than_every_retry(
    stack_on_own_postgres: FaultStack,
    own_postgres: services.Service,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stack = stack_on_own_postgres
    _canary(stack, "patient")
    _canary(stack, "hurried")
    assert run(capsys, "tenant", "add", "events", "--no-require-evaluation")[0] == 0
    jobs = ["ftjob-outage-1", "ftjob-outage-2"]
    for job in jobs:
        stack.fake.add_job(job, statuses=("succeeded",), tenant="events")
    # The worker starts (it checks the database) consuming another queue; the work is queued;
    # PostgreSQL goes down; only then does the worker consume the work.
    worker = stack.worker("w1", env=SHORT_RETRIES, extra_args=("--queues", "parked"))
    for job in jobs:
        assert run(capsys, "job-finished", job)[0] == 0
    patient = _queued_id(stack, capsys, "promote", "patient", "2", "--traffic", "30")
    monkeypatch.setenv("FTDEPLOY_OPERATION_TTL_SECONDS", "3")
    get_settings.cache_clear()
    hurried = _queued_id(stack, capsys, "promote", "hurried", "2", "--traffic", "30")
    monkeypatch.delenv("FTDEPLOY_OPERATION_TTL_SECONDS")
    get_settings.cache_clear()
    hurried_expires = stack.operation(hurried).expires_at
    assert hurried_expires is not None
    broker = redis.Redis.from_url(stack.broker_url)
    assert broker.llen("ftdeploy") == 4

    with own_postgres.down():
        from worker.app import app

        replies = app.control.add_consumer("ftdeploy", reply=True, timeout=10)
        assert replies and all("ok" in next(iter(r.values())) for r in replies), replies

        def gave_up() -> bool:
            log = worker.log_path.read_text(errors="replace")
            # Each task says in one line that it gave up and could not record it, and why.
            gave_up = f"reason=gave up after {OPERATION_ATTEMPTS} attempts"
            operations = _lines(log, "operation.unrecorded", gave_up)
            events = _lines(log, "job.unrecorded", "reason=")
            return operations == 2 and events == 2 and _drained(stack)

        stack.wait(gave_up, 60, "every task to give up")
        log = worker.log_path.read_text(errors="replace")
        assert "raised unexpected" not in log  # no task ends in a traceback
        retries = int(SHORT_RETRIES["FTDEPLOY_MAX_RETRIES"])
        assert _lines(log, "job.retry") == len(jobs) * retries
        assert _lines(log, "operation.retry") == 2 * (OPERATION_ATTEMPTS - 1)
        # The outage outlasts the short time to live too.
        stack.wait(
            lambda: clock.now() > hurried_expires + timedelta(seconds=1), 30, "the ttl to pass"
        )

    # Nothing of it could be written: both operations are as the door left them.
    assert {stack.operation(o).status for o in (patient, hurried)} == {OperationStatus.QUEUED}
    # PostgreSQL is back: beat's reconciler expires the operation whose time ran out, sends
    # again the one still within it and the events, whose messages the tasks used up.
    stack.worker("w2", beat=True)
    late = stack.wait(lambda: _ended(stack, hurried), 45, "the expired promotion to end")
    assert late.status == OperationStatus.EXPIRED, (late.status, late.error)
    assert late.error is not None and late.error.startswith("expired: not started within")
    sent = stack.wait(lambda: _ended(stack, patient), 45, "the patient promotion to end")
    assert sent.status == OperationStatus.SUCCEEDED, (sent.status, sent.error)
    assert stack.split("patient") == {1: 70, 2: 30}
    assert stack.split("hurried") == {1: 90, 2: 10}
    ended = stack.wait_ended(jobs, 45)
    assert {job: view.state for job, view in ended.items()} == dict.fromkeys(jobs, "done")
    with unit_of_work(stack.database_url) as session:
        left = session.scalars(
            select(Operation).where(Operation.status.not_in(FINAL_OPERATION_STATUSES))
        ).all()
    assert not left, [(o.id, o.status) for o in left]
    stack.check(accepted=jobs)
