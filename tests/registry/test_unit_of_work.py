"""The unit of work: what registry code asks to run after the commit runs only after it, and
never after a rollback; follow-up messages ride the same mechanism."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from registry import db as registry_db
from registry import messages, operations
from registry.db import after_commit, make_engine, unit_of_work
from registry.jobs import events, runs
from registry.models import DeploymentPolicy, JobEvent, Tenant
from registry.tenants import PolicyChanges, get_policy, set_policy
from tests.factories import make_run, make_tenant


def test_callbacks_run_after_the_commit_in_order(db_url: str) -> None:
    seen: list[str] = []
    with unit_of_work(db_url) as session:
        after_commit(session, lambda: seen.append("first"))
        after_commit(session, lambda: seen.append("second"))
        assert seen == []
    assert seen == ["first", "second"]


def test_a_rollback_drops_the_callbacks(db_url: str) -> None:
    seen: list[str] = []
    with pytest.raises(RuntimeError), unit_of_work(db_url) as session:
        after_commit(session, lambda: seen.append("never"))
        raise RuntimeError("undone")
    assert seen == []


def test_a_rolled_back_savepoint_drops_only_its_own(db_url: str) -> None:
    seen: list[str] = []
    with unit_of_work(db_url) as session:
        after_commit(session, lambda: seen.append("before"))
        with pytest.raises(RuntimeError), session.begin_nested():
            after_commit(session, lambda: seen.append("inside"))
            raise RuntimeError("only the savepoint")
        with session.begin_nested():
            after_commit(session, lambda: seen.append("released"))
        assert seen == []  # a savepoint's release is no commit
    assert seen == ["before", "released"]


def test_a_failing_callback_neither_fails_the_commit_nor_stops_the_others(db_url: str) -> None:
    seen: list[str] = []

    def broken() -> None:
        raise RuntimeError("after the commit")

    with unit_of_work(db_url) as session:
        make_tenant(session, "acme")
        after_commit(session, broken)
        after_commit(session, lambda: seen.append("still"))
    assert seen == ["still"]
    with unit_of_work(db_url) as session:
        assert session.scalar(select(func.count()).select_from(Tenant)) == 1


def test_nothing_carries_over_to_the_next_transaction(sessions: sessionmaker[Session]) -> None:
    seen: list[str] = []
    with sessions() as session:
        session.begin()
        after_commit(session, lambda: seen.append("closed"))
        session.rollback()
        with session.begin():
            pass
    assert seen == []


def test_a_message_is_sent_after_the_commit_then_marked(
    db_url: str, sent_messages: list[messages.Message]
) -> None:
    with unit_of_work(db_url) as session:
        make_tenant(session, "acme")
    with unit_of_work(db_url) as session:
        events.publish_event(session, "ftjob-1", "acme", "cli")
        assert sent_messages == []
    assert sent_messages == [
        messages.Message(messages.JOB_FINISHED, ("ftjob-1",), {"tenant": "acme"})
    ]
    with unit_of_work(db_url) as session:
        event = events.find_event(session, "ftjob-1")
        assert event is not None and event.enqueued_at is not None


def test_a_failed_send_leaves_the_event_for_the_reconciler(db_url: str) -> None:
    # No sender installed (the registry tests' default): as when the broker is down.
    with unit_of_work(db_url) as session:
        events.publish_event(session, "ftjob-1", None, "cli")
    with unit_of_work(db_url) as session:
        event = events.find_event(session, "ftjob-1")
        assert event is not None and event.enqueued_at is None
        assert events.unenqueued_events(session, older_than=timedelta(seconds=-1)) == ["ftjob-1"]


def test_a_rolled_back_unit_of_work_sends_nothing(
    db_url: str, sent_messages: list[messages.Message]
) -> None:
    with pytest.raises(RuntimeError), unit_of_work(db_url) as session:
        events.publish_event(session, "ftjob-1", None, "cli")
        raise RuntimeError("undone")
    assert sent_messages == []
    with unit_of_work(db_url) as session:
        assert session.scalar(select(func.count()).select_from(JobEvent)) == 0


def test_held_messages_wait_for_the_door(
    db_url: str, sent_messages: list[messages.Message]
) -> None:
    with unit_of_work(db_url) as session:
        held = messages.hold_messages(session)
        events.publish_event(session, "ftjob-1", None, "webhook")
        assert held == []
    assert len(held) == 1 and sent_messages == []
    messages.deliver(held[0])
    assert sent_messages == held
    with unit_of_work(db_url) as session:
        event = events.find_event(session, "ftjob-1")
        assert event is not None and event.enqueued_at is not None


def test_operations_and_evaluations_ask_the_worker_after_the_commit(
    db_url: str, sent_messages: list[messages.Message]
) -> None:
    with unit_of_work(db_url) as session:
        tenant = make_tenant(session, "acme")
        run = make_run(session, tenant)
        run_id, job_id = str(run.id), run.openai_job_id
    with unit_of_work(db_url) as session:
        operation = operations.queue_operation(session, "acme", "rollback", actor="alice")
        operations.send(session, operation, "acme")
        evaluation = runs.record_evaluation(session, job_id, "approve", resume=True)
        runs.record_evaluation(session, job_id, "approve")  # no resume: no message
        assert sent_messages == []
    assert sent_messages == [
        messages.Message(
            messages.ROLLBACK, (), {"tenant": "acme", "operation_id": str(operation.id)}
        ),
        messages.Message(
            messages.EVALUATION_RECORDED, (run_id,), {"evaluation_id": str(evaluation.id)}
        ),
    ]


def test_reading_a_policy_writes_nothing(db_url: str) -> None:
    with unit_of_work(db_url) as session:
        tenant = Tenant(slug="hosted")  # created by the host SaaS: no policy row
        session.add(tenant)
        session.flush()
        tenant_id = tenant.id
    with unit_of_work(db_url) as session:
        policy = get_policy(session, tenant_id)
        assert (policy.strategy, policy.canary_percent, policy.keep_deprecated) == (
            "immediate",
            10,
            3,
        )
        assert policy not in session and not session.new
    with unit_of_work(db_url) as session:
        assert session.get(DeploymentPolicy, tenant_id) is None
        set_policy(session, tenant_id, PolicyChanges(strategy="canary"))
    with unit_of_work(db_url) as session:
        stored = session.get(DeploymentPolicy, tenant_id)
        assert stored is not None and stored.strategy == "canary"


def _terminate(engine: Engine) -> int:
    """Ends the backend of the pool's one connection from another connection; its pid."""
    with engine.connect() as conn:
        pid = int(conn.scalar(text("SELECT pg_backend_pid()")) or 0)
    with make_engine(engine.url.render_as_string(hide_password=False)).connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    return pid


def test_a_connection_idle_too_long_is_pinged_and_replaced(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    try:
        dead = _terminate(engine)
        monkeypatch.setattr(registry_db, "PING_AFTER_IDLE_SECONDS", 0.0)  # "a while ago"
        with engine.connect() as conn:  # no error: the ping found it dead, the pool replaced it
            assert conn.scalar(text("SELECT pg_backend_pid()")) != dead
    finally:
        engine.dispose()


def test_a_connection_back_a_moment_ago_is_not_pinged(pg_url: str) -> None:
    # Its first statement fails instead (the tasks retry a disconnect), and the next checkout
    # gets a new connection.
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    try:
        dead = _terminate(engine)
        with pytest.raises(OperationalError) as failed, engine.connect() as conn:
            conn.scalar(text("SELECT 1"))
        assert failed.value.connection_invalidated
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT pg_backend_pid()")) != dead
    finally:
        engine.dispose()
