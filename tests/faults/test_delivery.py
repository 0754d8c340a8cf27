"""Duplicates, races and lost messages: one event sent ten times at once, two beats at once, an
event whose message the broker lost, and operators' rollbacks queued while a promotion runs."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import redis
from sqlalchemy import select

from registry.canary.outcome_input import Outcome
from registry.canary.outcomes import store_outcomes
from registry.db import unit_of_work
from registry.jobs import events
from registry.models import (
    FINAL_OPERATION_STATUSES,
    Deployment,
    ModelVersion,
    Operation,
    OperationStatus,
    Tenant,
    TrafficEvent,
)
from tests.faults.conftest import FaultStack
from tests.services import libpq_url
from worker import cli

pytestmark = pytest.mark.faults


def _drained(stack: FaultStack) -> bool:
    broker = redis.Redis.from_url(stack.broker_url)
    try:
        return broker.llen("ftdeploy") == 0 and broker.hlen("unacked") == 0
    finally:
        broker.close()


def _trail(stack: FaultStack, slug: str) -> list[tuple[str, int | None, dict[str, int]]]:
    """The tenant's audit trail: (action, version, split after), oldest first."""
    return [(a, v, after) for a, v, _, after in _changes(stack, slug)]


def _changes(
    stack: FaultStack, slug: str
) -> list[tuple[str, int | None, dict[str, int], dict[str, int]]]:
    with unit_of_work(stack.database_url) as session:
        rows = session.execute(
            select(
                TrafficEvent.action,
                TrafficEvent.version,
                TrafficEvent.split_before,
                TrafficEvent.split_after,
            )
            .join(Tenant, Tenant.id == TrafficEvent.tenant_id)
            .where(Tenant.slug == slug)
            .order_by(TrafficEvent.id)
        )
        return [(a, v, b, s) for a, v, b, s in rows]


def test_the_same_event_sent_ten_times_at_once(stack: FaultStack) -> None:
    job = "ftjob-tenfold"
    assert cli.main(["tenant", "add", "tenfold", "--no-require-evaluation"]) == 0
    stack.fake.add_job(job, statuses=("succeeded",), tenant="tenfold")
    stack.fake.inject(job, ("slow", 0.5))  # the first attempts overlap the others
    stack.worker(concurrency=4)

    def send(n: int) -> None:
        if n % 2:  # half through the CLI's door (accept, then publish), half straight in
            assert cli.main(["job-finished", job, "--tenant", "tenfold"]) == 0
        else:
            stack.send(job, "tenfold")

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(send, range(10)))
    stack.wait(lambda: _drained(stack), 60, "all ten deliveries handled")
    view = stack.wait_ended([job], 5)[job]
    assert view.state == "done", view
    # Ten deliveries, ten attempts; duplicates side by side are not crashes (no process died).
    assert view.attempts == 10 and view.crashes == 0, view
    assert [(a, v) for a, v, _ in _trail(stack, "tenfold")] == [("deploy", 1)]
    stack.check(accepted=[job])


def test_two_beats_at_once(stack: FaultStack) -> None:
    """Two workers with a beat each: their sweeps and reconciliations overlap, and every
    canary step and every stranded event still happens once."""
    slug, other = "twobeats", "twobeats-stranded"
    policy = "--strategy canary --steps 10,25,50,100 --auto-promote --threshold 0.9"
    policy += " --min-samples 20 --bake-seconds 0 --no-require-evaluation"
    assert cli.main(["tenant", "add", slug, *policy.split()]) == 0
    assert cli.main(["tenant", "add", other, "--no-require-evaluation"]) == 0
    first, second = "ftjob-beats-1", "ftjob-beats-2"
    stranded = [f"ftjob-stranded-{n}" for n in range(3)]
    for job in (first, second):
        stack.fake.add_job(job, statuses=("succeeded",), tenant=slug)
    for job in stranded:
        stack.fake.add_job(job, statuses=("succeeded",), tenant=other)
    env = {
        "FTDEPLOY_SWEEP_SECONDS": "0.5",
        "FTDEPLOY_RECONCILE_SECONDS": "0.5",
        "FTDEPLOY_RECONCILE_GRACE_SECONDS": "0",
        "FTDEPLOY_OUTCOME_BUCKET_SECONDS": "1",
    }
    stack.worker("b1", beat=True, env=env)
    stack.worker("b2", beat=True, env=env)
    assert cli.main(["job-finished", first]) == 0
    stack.wait_ended([first], 30)
    assert cli.main(["job-finished", second]) == 0
    stack.wait_ended([second], 30)
    # Events accepted but never handed to the broker (a door that died in between): both
    # beats' reconcilers find them and send them.
    with unit_of_work(stack.database_url) as session:
        for job in stranded:
            events.accept_event(session, job, other, "cli")

    # The serving app reports good outcomes for the canary until it reaches 100%.
    deadline = time.monotonic() + 60
    while _trail(stack, slug)[-1][2] != {"2": 100}:
        assert time.monotonic() < deadline, f"canary stuck: {_trail(stack, slug)}\n{stack.logs()}"
        with unit_of_work(stack.database_url) as session:
            result = store_outcomes(session, [Outcome(slug, 2, True, count=10)], bucket_seconds=1)
            assert not result.refused
        time.sleep(0.2)
    stack.wait_ended(stranded, 30)
    time.sleep(1.5)  # a few more sweeps and reconciliations, which must find nothing to do
    stack.wait(lambda: _drained(stack), 30, "the queue to drain")

    trail = [(a, s) for a, _, s in _trail(stack, slug)]
    assert trail[:2] == [("deploy", {"1": 100}), ("deploy", {"1": 90, "2": 10})]
    assert trail[2:] == [
        ("auto_step", {"1": 75, "2": 25}),
        ("auto_step", {"1": 50, "2": 50}),
        ("auto_promote", {"2": 100}),
    ]
    others = [(a, v) for a, v, _ in _trail(stack, other)]  # each stranded job deployed once
    assert sorted(others) == [("deploy", n) for n in range(1, len(stranded) + 1)]
    stack.check(accepted=[first, second, *stranded])


def test_an_event_whose_message_the_broker_lost_is_sent_again(stack: FaultStack) -> None:
    tenant, job = "crash-lost", "ftjob-crash-lost-1"
    assert cli.main(["tenant", "add", tenant, "--no-require-evaluation"]) == 0
    stack.fake.add_job(job, statuses=("succeeded",), tenant=tenant)
    stack.start_worker("w4", beat=True)
    # Accepted and handed to the broker, which then lost the message (as Redis does when a worker
    # is killed between popping it and recording it as unacknowledged).
    with unit_of_work() as session:
        events.accept_event(session, job, tenant, "test")
        events.mark_enqueued(session, job)
    ended = stack.wait_event_ended(job, timeout=60)
    assert ended.state == "done"
    assert [v for v, _, _ in stack.versions(tenant)] == [1]
    assert stack.count(ModelVersion, tenant) == stack.count(Deployment, tenant) == 1
    assert sorted(v for a, v in stack.audit_actions(tenant) if a == "deploy") == [1]
    assert stack.split(tenant) == {1: 100}
    event = stack.event(job)
    assert event is not None and event.attempts == 1
    stack.check(accepted=[job])


def test_rollbacks_queued_while_a_promotion_runs_have_serial_outcomes(stack: FaultStack) -> None:
    slug = "serial"
    assert cli.main(["tenant", "add", slug, "--no-require-evaluation"]) == 0
    jobs = [f"ftjob-serial-{n}" for n in range(3)]
    for job in jobs:
        stack.fake.add_job(job, statuses=("succeeded",), tenant=slug)
    stack.worker(concurrency=3)
    for job in jobs:  # v1, v2, v3 deployed one after the other: v3 serves
        assert cli.main(["job-finished", job]) == 0
        stack.wait_ended([job], 30)

    with unit_of_work(stack.database_url) as session:
        tenant_id = session.scalars(select(Tenant.id).where(Tenant.slug == slug)).one()
    # Hold the tenant's lock, queue the operations, and let them all block on it; then let go.
    with psycopg.connect(libpq_url(stack.database_url)) as holder:
        # NO KEY UPDATE: it blocks lock_tenant's FOR UPDATE, not the queueing's foreign-key checks.
        holder.execute("SELECT 1 FROM tenants WHERE id = %s FOR NO KEY UPDATE", (tenant_id,))
        # Forced: each applies to the split the previous one left, instead of ending stale
        # because the split it was queued on changed (that rule is tested in the registry).
        requests = [
            ["promote", slug, "1", "--traffic", "30", "--force"],
            ["rollback", slug, "--force"],
            ["promote", slug, "2", "--traffic", "20", "--force"],
            ["rollback", slug, "--force"],
            ["rollback", slug, "--force"],
        ]
        for argv in requests:
            assert cli.main(argv) == 0
        stack.wait(lambda: _waiting_on_locks(stack) >= 2, 10, "operations blocked on the lock")
        holder.rollback()
    stack.wait(
        lambda: _operations_finished(stack, tenant_id) == len(requests),
        30,
        "the operations to finish",
    )

    # Whatever order they ran in, each started from the split the previous one left (the
    # closing checks follow the audit chain), and each operation's recorded result is exactly
    # one link of that chain.
    with unit_of_work(stack.database_url) as session:
        done = session.scalars(
            select(Operation).where(
                Operation.tenant_id == tenant_id, Operation.status == OperationStatus.SUCCEEDED
            )
        ).all()
        results = sorted(str(((o.result or {})["before"], (o.result or {})["after"])) for o in done)
    changes = _changes(stack, slug)[len(jobs) :]
    assert results == sorted(str((before, after)) for _, _, before, after in changes)
    assert len(done) >= 3  # the promotions and at least one rollback found something to do
    stack.check(accepted=jobs)


def _waiting_on_locks(stack: FaultStack) -> int:
    with psycopg.connect(libpq_url(stack.database_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def _operations_finished(stack: FaultStack, tenant_id: object) -> int:
    with unit_of_work(stack.database_url) as session:
        statuses = session.scalars(
            select(Operation.status).where(Operation.tenant_id == tenant_id)
        ).all()
    return sum(1 for s in statuses if s in FINAL_OPERATION_STATUSES)
