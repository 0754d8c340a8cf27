"""Delivery by hand: order per tenant and endpoint, the retry schedule, Retry-After, giving up,
410 and long failure disabling an endpoint (and telling the others), the lease."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from registry import clock
from registry.notify import delivery, endpoints
from registry.notify.models import NotificationEndpoint
from registry.notify.outbox import emit
from registry.notify.types import EventType
from tests.factories import make_tenant
from tests.registry.notify.support import add, answered, deliveries, next_due, outbox, record


def _events(sessions: sessionmaker[Session], per_tenant: dict[str, int]) -> dict[str, uuid.UUID]:
    ids = {}
    with sessions() as session, session.begin():
        for slug, count in per_tenant.items():
            tenant = make_tenant(session, slug)
            ids[slug] = tenant.id
            for n in range(count):
                emit(session, tenant.id, EventType.TENANT_PAUSED, {"n": n})
    return ids


def test_a_later_event_waits_while_an_earlier_one_is_pending(
    sessions: sessionmaker[Session],
) -> None:
    hook = add(sessions, "hook").endpoint
    tenants = _events(sessions, {"a": 2, "b": 1})
    now = clock.now()
    first = next_due(sessions, hook.id, now)
    assert first is not None and first.message.data["n"] == 0
    assert record(sessions, first, answered(503), now).outcome is delivery.Outcome.RETRY

    # a's second event waits for its first; b's is independent.
    other = next_due(sessions, hook.id, now)
    assert other is not None and other.message.type == "tenant.paused"
    assert outbox_stream(sessions, other) == str(tenants["b"])
    assert record(sessions, other, answered(204), now).outcome is delivery.Outcome.DELIVERED
    assert next_due(sessions, hook.id, now) is None

    later = now + timedelta(seconds=6)  # the first retry: 5 s, no jitter in these tests
    again = next_due(sessions, hook.id, later)
    assert again is not None and again.message.id == first.message.id and again.attempts == 1
    record(sessions, again, answered(200), later)
    last = next_due(sessions, hook.id, later)
    assert last is not None and last.message.data["n"] == 1


def outbox_stream(sessions: sessionmaker[Session], outgoing: delivery.Outgoing) -> str:
    return next(r.stream for r in outbox(sessions) if str(r.id) == outgoing.message.id)


def test_the_schedule_then_giving_up_releases_the_next(sessions: sessionmaker[Session]) -> None:
    hook = add(sessions, "hook").endpoint
    _events(sessions, {"a": 2})
    now = clock.now()
    waits = []
    for _ in range(4):
        outgoing = next_due(sessions, hook.id, now)
        assert outgoing is not None and outgoing.message.data["n"] == 0
        result = record(sessions, outgoing, answered(None), now)
        if result.next_attempt_at is not None:
            waits.append((result.next_attempt_at - now).total_seconds())
            now = result.next_attempt_at
    assert waits == [5.0, 300.0, 1800.0]
    assert result.outcome is delivery.Outcome.FAILED
    following = next_due(sessions, hook.id, now)
    assert following is not None and following.message.data["n"] == 1


def test_retry_after_is_honoured_and_4xx_is_given_up_at_once(
    sessions: sessionmaker[Session],
) -> None:
    hook = add(sessions, "hook").endpoint
    _events(sessions, {"a": 2})
    now = clock.now()
    outgoing = next_due(sessions, hook.id, now)
    assert outgoing is not None
    limited = record(sessions, outgoing, answered(429, retry_after=42), now)
    assert limited.next_attempt_at == now + timedelta(seconds=42)
    outgoing = next_due(sessions, hook.id, now + timedelta(seconds=42))
    assert outgoing is not None
    assert record(sessions, outgoing, answered(400), now).outcome is delivery.Outcome.FAILED
    assert [d.status for d in deliveries(sessions, hook.id)] == ["failed", "pending"]


def test_410_disables_the_endpoint_and_tells_the_others(sessions: sessionmaker[Session]) -> None:
    gone = add(sessions, "gone").endpoint
    watcher = add(sessions, "watcher", events=["endpoint.disabled"]).endpoint
    _events(sessions, {"a": 1})
    now = clock.now()
    outgoing = next_due(sessions, gone.id, now)
    assert outgoing is not None
    result = record(sessions, outgoing, answered(410), now)
    assert result.outcome is delivery.Outcome.GONE and "410" in (result.disabled or "")
    with sessions() as session:
        endpoint = session.get_one(NotificationEndpoint, gone.id)
        assert not endpoint.enabled and "410" in (endpoint.disabled_reason or "")
        listed = {row["name"]: row for row in endpoints.list_endpoints(session)}
    assert listed["gone"]["enabled"] is False and listed["gone"]["pending"] == 1
    assert next_due(sessions, gone.id, now) is None
    told = next_due(sessions, watcher.id, clock.now())
    assert told is not None and told.message.type == "endpoint.disabled"
    assert told.message.data["endpoint"] == "gone"
    with sessions() as session, session.begin():
        endpoints.enable_endpoint(session, "gone")
    assert next_due(sessions, gone.id, now) is not None  # the pending one resumes


def test_an_endpoint_failing_for_too_long_is_disabled(sessions: sessionmaker[Session]) -> None:
    hook = add(sessions, "flaky").endpoint
    _events(sessions, {"a": 1})
    now = clock.now()
    outgoing = next_due(sessions, hook.id, now)
    assert outgoing is not None
    assert record(sessions, outgoing, answered(500), now).disabled is None
    later = now + timedelta(seconds=3601)  # POLICY.disable_after_seconds
    outgoing = next_due(sessions, hook.id, later)
    assert outgoing is not None
    result = record(sessions, outgoing, answered(500), later)
    assert result.disabled is not None and "every attempt failed for 3601 s" in result.disabled


def test_one_lease_per_endpoint(sessions: sessionmaker[Session]) -> None:
    hook = add(sessions, "hook").endpoint
    _events(sessions, {"a": 1})
    now = clock.now()
    with sessions() as session, session.begin():
        assert delivery.claim(session, hook.id, now, 30)
        assert not delivery.claim(session, hook.id, now, 30)
        assert delivery.due_endpoints(session, now) == []
        # A holder that died: its lease runs out and the endpoint is due again.
        later = now + timedelta(seconds=31)
        assert delivery.due_endpoints(session, later) == [hook.id]
        assert delivery.claim(session, hook.id, later, 30)
        delivery.release(session, hook.id)
        assert delivery.due_endpoints(session, later) == [hook.id]


def test_an_operator_disabling_an_endpoint_tells_the_others(
    sessions: sessionmaker[Session],
) -> None:
    moving = add(sessions, "moving").endpoint
    watcher = add(sessions, "watcher", events=["endpoint.disabled"]).endpoint
    with sessions() as session, session.begin():
        endpoints.disable_endpoint(session, "moving", actor="ops", reason="receiver moving")
    told = next_due(sessions, watcher.id, clock.now())
    assert told is not None and told.message.type == "endpoint.disabled"
    assert told.message.data["endpoint"] == "moving"
    assert told.message.data["reason"] == "disabled by ops: receiver moving"
    assert next_due(sessions, moving.id, clock.now()) is None  # not to itself

    # Disabling again changes nothing and tells nobody twice.
    with sessions() as session, session.begin():
        endpoints.disable_endpoint(session, "moving", actor="ops", reason="again")
    with sessions() as session:
        assert session.get_one(NotificationEndpoint, moving.id).disabled_reason == (
            "disabled by ops: receiver moving"
        )
    assert [d.status for d in deliveries(sessions, watcher.id)] == ["pending"]
