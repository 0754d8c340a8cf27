"""Issue 10, operations: decided against the split they were queued on (stale unless forced), a
time to live (expired), cancelled while queued, never stranded (the reconciler), and a message
that disagrees with the operation it names is refused. Each final status is told once."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from registry import clock, messages, operations, stranded_operations, versions
from registry.errors import OperationNotCancellable, SettingsInvalid
from registry.models import Operation, OperationStatus, Tenant
from registry.notify.models import OutboxEvent
from registry.settings import load_settings
from tests.factories import deploy_new, make_tenant

GRACE = timedelta(seconds=30)
STALLED = timedelta(hours=2)


def _canary(sessions: sessionmaker[Session], slug: str = "acme") -> uuid.UUID:
    """v1 serves 90%, v2 is a canary at 10%."""
    with sessions() as session, session.begin():
        tenant = make_tenant(
            session, slug, strategy="canary", canary_percent=10, require_evaluation=False
        )
        deploy_new(session, tenant)
        deploy_new(session, tenant)
        return tenant.id


def _split(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> dict[int, int]:
    with sessions() as session:
        return versions.current_split(session, tenant_id)


def _queue(sessions: sessionmaker[Session], kind: str = "promote", **options: object) -> str:
    if kind == "promote":
        options.setdefault("version", 2)
        options.setdefault("traffic_percent", 30)
    with sessions() as session, session.begin():
        return str(operations.queue_operation(session, "acme", kind, **options).id)  # type: ignore[arg-type]


def _run(sessions: sessionmaker[Session], operation_id: str, **options: object) -> Operation:
    with sessions() as session, session.begin():
        return operations.run_operation(session, operation_id, **options)  # type: ignore[arg-type]


def _told(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return [e.type for e in session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq))]


def test_item1_an_operation_queued_before_a_rollback_ends_stale_and_changes_nothing(
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = _canary(sessions)
    queued = _queue(sessions)  # promote v2 to 30%, decided on v1:90% v2:10%
    with sessions() as session, session.begin():
        versions.rollback(session, tenant_id, actor="auto", reason="canary failing")
    assert _split(sessions, tenant_id) == {1: 100}

    done = _run(sessions, queued)

    assert done.status == OperationStatus.STALE
    assert done.error is not None
    assert "v1:90% v2:10% -> v1:100%" in done.error
    assert "rollback by auto" in done.error and "force" in done.error
    assert _split(sessions, tenant_id) == {1: 100}  # v2 stays rolled back
    assert _told(sessions).count("operation.stale") == 1
    # A redelivered message finds it ended.
    assert _run(sessions, queued).status == OperationStatus.STALE
    assert _told(sessions).count("operation.stale") == 1


def test_item1_a_forced_operation_runs_on_the_split_it_finds(
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = _canary(sessions)
    queued = _queue(sessions, "rollback", force=True)
    with sessions() as session, session.begin():
        versions.promote(session, tenant_id, 2, 50, actor="bob")
    assert _run(sessions, queued).status == OperationStatus.SUCCEEDED
    assert _split(sessions, tenant_id) == {1: 100}


def test_item1_a_split_that_changed_and_changed_back_is_still_stale(
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = _canary(sessions)
    queued = _queue(sessions, "rollback")
    with sessions() as session, session.begin():
        versions.promote(session, tenant_id, 2, 50, actor="bob")
    with sessions() as session, session.begin():
        versions.promote(session, tenant_id, 2, 10, actor="bob")
    assert _split(sessions, tenant_id) == {1: 90, 2: 10}
    done = _run(sessions, queued)
    assert done.status == OperationStatus.STALE
    assert done.error is not None and "changed back" in done.error and "bob" in done.error


def test_item1_a_change_that_leaves_the_split_alone_is_not_staleness(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session, session.begin():
        tenant = make_tenant(session, "acme", strategy="blue_green", require_evaluation=False)
        deploy_new(session, tenant)  # v1 staged at 0%
        versions.promote(session, tenant.id, 1, 100)
        deploy_new(session, tenant)  # v2 staged
        tenant_id = tenant.id
    queued = _queue(sessions, version=2, traffic_percent=100)
    with sessions() as session, session.begin():
        # v3 staged after the operation was queued: audited, but the split is as it was.
        deploy_new(session, session.get_one(Tenant, tenant_id))
    assert _run(sessions, queued).status == OperationStatus.SUCCEEDED
    assert _split(sessions, tenant_id) == {2: 100}


def test_item2_an_operation_started_after_its_time_to_live_ends_expired(
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = _canary(sessions)
    queued = _queue(sessions, ttl=timedelta(seconds=0))
    done = _run(sessions, queued)
    assert done.status == OperationStatus.EXPIRED
    assert done.error is not None and "time to live" in done.error
    assert _split(sessions, tenant_id) == {1: 90, 2: 10}
    assert "operation.expired" in _told(sessions)


def test_item2_the_ttl_setting_is_checked_and_names_its_variable() -> None:
    assert load_settings().operation_ttl_seconds == 300
    assert load_settings(operation_ttl_seconds=5).operation_ttl_seconds == 5
    for bad in (0, -1, 10**9, "soon"):
        with pytest.raises(SettingsInvalid) as refused:
            load_settings(operation_ttl_seconds=bad)
        assert "FTDEPLOY_OPERATION_TTL_SECONDS" in str(refused.value)


def test_item2_the_reconciler_expires_queued_operations_and_resends_unsent_ones(
    sessions: sessionmaker[Session], sent_messages: list[messages.Message]
) -> None:
    _canary(sessions)
    old = _queue(sessions, ttl=timedelta(seconds=60))
    young = _queue(sessions, "rollback", ttl=timedelta(hours=1))
    later = clock.now() + timedelta(seconds=120)
    with sessions() as session, session.begin():
        found = stranded_operations.reconcile(
            session, grace=GRACE, stalled_after=STALLED, now=later
        )
    assert [str(i) for i in found.expired] == [old]
    assert [str(i) for i in found.unsent] == [young]
    assert [(m.task, m.kwargs["operation_id"]) for m in sent_messages] == [
        (messages.ROLLBACK, young)
    ]
    with sessions() as session:
        assert operations.get_operation(session, old).status == OperationStatus.EXPIRED
        resent = operations.get_operation(session, young)
        assert resent.status == OperationStatus.QUEUED and resent.enqueued_at is not None
    # Sent now: the next period sends nothing again (until it stalls).
    with sessions() as session, session.begin():
        again = stranded_operations.reconcile(
            session, grace=GRACE, stalled_after=STALLED, now=later
        )
    assert (again.expired, again.unsent, again.stalled) == ([], [], [])
    assert len(sent_messages) == 1
    assert _told(sessions).count("operation.expired") == 1


def test_item3_cancel_a_queued_operation_then_its_message_does_nothing(
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = _canary(sessions)
    queued = _queue(sessions)
    with sessions() as session, session.begin():
        cancelled = operations.cancel_operation(
            session, queued, actor="alice", reason="wrong version"
        )
        assert cancelled.status == OperationStatus.CANCELLED
        assert cancelled.error == "cancelled by alice: wrong version"
    assert _run(sessions, queued).status == OperationStatus.CANCELLED
    assert _split(sessions, tenant_id) == {1: 90, 2: 10}
    with sessions() as session:
        told = session.scalars(
            select(OutboxEvent).where(OutboxEvent.type == "operation.cancelled")
        ).one()
        assert told.data["actor"] == "operator:alice"
        assert told.data["reason"] == "wrong version"
    with sessions() as session, session.begin(), pytest.raises(OperationNotCancellable) as no:
        operations.cancel_operation(session, queued, actor="alice")
    assert "has ended (cancelled)" in str(no.value)


def test_item3_an_operation_that_ended_cannot_be_cancelled(
    sessions: sessionmaker[Session],
) -> None:
    _canary(sessions)
    queued = _queue(sessions)
    assert _run(sessions, queued).status == OperationStatus.SUCCEEDED
    with sessions() as session, session.begin(), pytest.raises(OperationNotCancellable) as no:
        operations.cancel_operation(session, queued, actor="alice")
    assert "succeeded" in str(no.value)


def test_item3_a_running_operation_cannot_be_cancelled(pg_url: str) -> None:
    from registry.db import session_factory

    sessions = session_factory(pg_url)
    _canary(sessions)
    queued = _queue(sessions)
    holding, release = threading.Event(), threading.Event()

    def worker_holds_it() -> None:
        with sessions() as session, session.begin():
            session.execute(
                text("SELECT id FROM ai_operations WHERE id = :id FOR UPDATE"),
                {"id": uuid.UUID(queued)},
            )
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=worker_holds_it)
    thread.start()
    try:
        assert holding.wait(10)
        with sessions() as session, session.begin(), pytest.raises(OperationNotCancellable) as no:
            operations.cancel_operation(session, queued, actor="alice")
        assert "a worker is running it" in str(no.value)
    finally:
        release.set()
        thread.join()
    with sessions() as session:
        assert operations.get_operation(session, queued).status == OperationStatus.QUEUED


def test_item3_list_operations_by_tenant_and_status(sessions: sessionmaker[Session]) -> None:
    _canary(sessions)
    _canary(sessions, "other")
    first = _queue(sessions)
    _run(sessions, first)
    second = _queue(sessions, "rollback")
    with sessions() as session:
        rows = operations.list_operations(session, "acme")
        assert [(str(o.id), slug) for o, slug in rows] == [(second, "acme"), (first, "acme")]
        queued = operations.list_operations(session, status="queued")
        assert [str(o.id) for o, _ in queued] == [second]
        assert len(operations.list_operations(session, limit=1)) == 1
        assert operations.list_operations(session, "other") == []


@pytest.mark.parametrize(
    ("kind", "asked"),
    [
        ("promote", operations.Asked("promote", "other", 2, 30)),  # another tenant
        ("promote", operations.Asked("promote", "acme", 1, 30)),  # another version
        ("promote", operations.Asked("promote", "acme", 2, 100)),  # another percent
        ("promote", operations.Asked("rollback", "acme")),  # another kind
        ("rollback", operations.Asked("rollback", "no-such-tenant")),
        ("rollback", operations.Asked("rollback", ["acme"])),  # not even a tenant ref
    ],
)
def test_item6_a_message_that_disagrees_with_its_operation_is_refused(
    sessions: sessionmaker[Session], kind: str, asked: operations.Asked
) -> None:
    tenant_id = _canary(sessions)
    other_id = _canary(sessions, "other")
    queued = _queue(sessions, kind)
    done = _run(sessions, queued, asked=asked)
    assert done.status == OperationStatus.FAILED
    assert done.error is not None and done.error.startswith("refused: ")
    assert _split(sessions, tenant_id) == {1: 90, 2: 10}
    assert _split(sessions, other_id) == {1: 90, 2: 10}


def test_item6_a_message_that_agrees_runs(sessions: sessionmaker[Session]) -> None:
    tenant_id = _canary(sessions)
    queued = _queue(sessions)
    asked = operations.Asked("promote", str(tenant_id), "v2", 30)
    assert _run(sessions, queued, asked=asked).status == OperationStatus.SUCCEEDED
    assert _split(sessions, tenant_id) == {1: 70, 2: 30}


def test_an_operation_a_message_brought_is_marked_enqueued_before_its_sender_marks_it(
    sessions: sessionmaker[Session],
) -> None:
    # The sender's mark commits after its send returns; a fast worker can end the operation
    # first. Run from a message, the operation records that the broker had it.
    tenant_id = _canary(sessions)
    by_message, by_hand = _queue(sessions), _queue(sessions, traffic_percent=50)
    asked = operations.Asked("promote", str(tenant_id), 2, 30)
    assert _run(sessions, by_message, asked=asked).enqueued_at is not None
    assert _run(sessions, by_hand).enqueued_at is None
