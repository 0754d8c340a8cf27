"""Replay by hand: failed deliveries queued again with their own webhook-id and in order, what
a disabled endpoint missed queued for it, a disabled endpoint refused, one event at a time, and
the send after the commit only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from registry import clock, messages
from registry.errors import InvalidInput, TenantNotFound
from registry.notify import endpoints, replay
from registry.notify.errors import (
    EndpointDisabled,
    EndpointNotFound,
    NotificationNotFound,
    NotReplayable,
)
from registry.notify.outbox import emit
from registry.notify.types import EventType
from registry.tenants import find_tenant
from tests.factories import make_tenant
from tests.registry.notify.support import add, answered, deliveries, next_due, record


@pytest.fixture
def sent() -> Iterator[list[str]]:
    calls: list[str] = []
    previous = messages.set_sender(lambda message: calls.append(message.kwargs["endpoint_id"]))
    yield calls
    messages.set_sender(previous)


def _emit(sessions: sessionmaker[Session], slug: str, count: int) -> uuid.UUID:
    """`count` notifications of tenant `slug` (made on first use); its id."""
    with sessions() as session, session.begin():
        try:
            tenant = find_tenant(session, slug)
        except TenantNotFound:
            tenant = make_tenant(session, slug)
        for n in range(count):
            emit(session, tenant.id, EventType.TENANT_PAUSED, {"n": n})
        return tenant.id


def _replay(sessions: sessionmaker[Session], name: str, **options: object) -> replay.Replayed:
    with sessions() as session, session.begin():
        return replay.replay(session, name, **options)  # type: ignore[arg-type]


def _fail_all(sessions: sessionmaker[Session], endpoint_id: uuid.UUID) -> list[str]:
    """Answer every due delivery 400 (given up at once); the webhook-ids, in order."""
    failed = []
    now = clock.now()
    while (outgoing := next_due(sessions, endpoint_id, now)) is not None:
        record(sessions, outgoing, answered(400), now)
        failed.append(outgoing.message.id)
    return failed


def test_failed_deliveries_go_again_in_order_with_their_ids(
    sessions: sessionmaker[Session], sent: list[str]
) -> None:
    hook = add(sessions, "hook").endpoint
    _emit(sessions, "acme", 3)
    failed = _fail_all(sessions, hook.id)
    assert [d.status for d in deliveries(sessions, hook.id)] == ["failed"] * 3
    sent.clear()

    result = _replay(sessions, "hook")
    assert sorted(result.requeued) == sorted(failed) and result.missed == []
    assert result.record()["requeued"] == 3
    assert sent == [str(hook.id)]  # one delivery task, after the commit
    rows = deliveries(sessions, hook.id)
    assert [(d.status, d.attempts, d.finished_at) for d in rows] == [("pending", 0, None)] * 3
    now = clock.now()
    order = []
    while (outgoing := next_due(sessions, hook.id, now)) is not None:
        order.append(outgoing.message.id)
        record(sessions, outgoing, answered(204), now)
    assert order == failed  # the same webhook-ids, in sequence order
    assert _replay(sessions, "hook").record()["webhook_ids"] == []  # nothing more: idempotent


def test_a_replayed_delivery_goes_ahead_of_a_later_pending_one(
    sessions: sessionmaker[Session], sent: list[str]
) -> None:
    hook = add(sessions, "hook").endpoint
    _emit(sessions, "acme", 1)
    [first] = _fail_all(sessions, hook.id)
    _emit(sessions, "acme", 1)  # seq 2, pending behind nothing
    _replay(sessions, "hook")
    outgoing = next_due(sessions, hook.id, clock.now())
    assert outgoing is not None and outgoing.message.id == first


def test_what_a_disabled_endpoint_missed_is_queued_once_enabled(
    sessions: sessionmaker[Session], sent: list[str]
) -> None:
    hook = add(sessions, "hook", events=["tenant.paused"]).endpoint
    other = add(sessions, "other").endpoint
    _emit(sessions, "acme", 1)
    with sessions() as session, session.begin():
        endpoints.disable_endpoint(session, "hook", actor="ops", reason="maintenance")
    tenant_id = _emit(sessions, "acme", 2)
    with sessions() as session, session.begin():
        emit(session, tenant_id, EventType.TENANT_RESUMED, {})  # not one it wants
    assert len(deliveries(sessions, hook.id)) == 1

    with pytest.raises(EndpointDisabled, match=r"disabled by ops: maintenance.*enable it"):
        _replay(sessions, "hook")
    assert len(deliveries(sessions, hook.id)) == 1  # nothing changed

    sent.clear()
    with sessions() as session, session.begin():
        endpoints.enable_endpoint(session, "hook")
    assert sent == [str(hook.id)]  # its pending ones resume now, not at beat's next round
    sent.clear()
    result = _replay(sessions, "hook")
    assert len(result.missed) == 2 and result.requeued == [] and sent == [str(hook.id)]
    rows = deliveries(sessions, hook.id)
    assert [d.seq for d in rows] == [1, 2, 3]
    other_ids = {str(d.event_id) for d in deliveries(sessions, other.id)}
    assert set(result.missed) <= other_ids  # the very events (and ids) the others got
    assert _replay(sessions, "hook").missed == []


def test_since_and_one_event(sessions: sessionmaker[Session], sent: list[str]) -> None:
    hook = add(sessions, "hook").endpoint
    _emit(sessions, "acme", 2)
    failed = _fail_all(sessions, hook.id)
    _emit(sessions, "acme", 1)
    with pytest.raises(NotReplayable, match="is pending: only failed or missed"):
        _replay(sessions, "hook", event=str(deliveries(sessions, hook.id)[-1].event_id))
    with pytest.raises(NotificationNotFound, match="no notification"):
        _replay(sessions, "hook", event=str(uuid.uuid4()))
    with pytest.raises(InvalidInput, match="invalid event"):
        _replay(sessions, "hook", event="not-an-id")
    with pytest.raises(InvalidInput, match="invalid since"):
        _replay(sessions, "hook", since="yesterday")
    later = (clock.now() + timedelta(minutes=5)).isoformat()
    assert _replay(sessions, "hook", since=later).record()["webhook_ids"] == []

    assert _replay(sessions, "hook", event=failed[1]).requeued == [failed[1]]
    assert [d.status for d in deliveries(sessions, hook.id)] == ["failed", "pending", "pending"]
    assert _replay(sessions, "hook", since="1h").requeued == [failed[0]]


def test_a_tenant_endpoint_replays_only_its_tenant_and_is_hidden_outside_its_scope(
    sessions: sessionmaker[Session], sent: list[str]
) -> None:
    acme = _emit(sessions, "acme", 0)
    beta = _emit(sessions, "beta", 0)
    add(sessions, "acme-hook", tenant_ref="acme")
    with sessions() as session, session.begin():
        endpoints.disable_endpoint(session, "acme-hook", actor="ops")
    _emit(sessions, "acme", 1)
    _emit(sessions, "beta", 2)
    with sessions() as session, session.begin():
        endpoints.enable_endpoint(session, "acme-hook", visible={acme})
    with pytest.raises(EndpointNotFound, match="'acme-hook'"):
        _replay(sessions, "acme-hook", visible={beta})
    assert len(_replay(sessions, "acme-hook", visible={acme}).missed) == 1
