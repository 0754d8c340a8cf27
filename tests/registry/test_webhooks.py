"""registry.jobs.webhooks: what counts as an event, and the deduplicated, transactional record."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from registry.db import session_factory
from registry.errors import InvalidInput
from registry.jobs import webhooks
from registry.jobs.events import find_event
from registry.jobs.webhooks import DeliveryOutcome, WebhookEvent, parse_event, record_delivery
from registry.models import EventState, JobEvent, WebhookDelivery


def _job_event(job_id: str = "ftjob-abc123", kind: str = "succeeded") -> dict[str, Any]:
    return {
        "id": "evt_1",
        "object": "event",
        "created_at": 1_750_000_000,
        "type": f"fine_tuning.job.{kind}",
        "data": {"id": job_id},
    }


@pytest.mark.parametrize("kind", ["succeeded", "failed", "cancelled"])
def test_parse_job_finished_events(kind: str) -> None:
    parsed = parse_event("wh_1", _job_event(kind=kind))
    assert parsed == WebhookEvent("wh_1", f"fine_tuning.job.{kind}", "ftjob-abc123")
    assert parsed.is_job_finished


def test_parse_other_event_type_has_no_job() -> None:
    parsed = parse_event("wh_1", {"type": "batch.completed", "data": {"id": "batch_1"}})
    assert parsed == WebhookEvent("wh_1", "batch.completed", None)
    assert not parsed.is_job_finished


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2],
        "fine_tuning.job.succeeded",
        None,
        {},
        {"type": 7},
        {"type": ""},
        {"type": "Fine Tuning!"},
        {"type": "fine_tuning.job.succeeded"},
        {"type": "fine_tuning.job.succeeded", "data": 5},
        {"type": "fine_tuning.job.succeeded", "data": {}},
        {"type": "fine_tuning.job.succeeded", "data": {"id": 5}},
        {"type": "fine_tuning.job.succeeded", "data": {"id": "ftjob with spaces"}},
        {"type": "fine_tuning.job.succeeded", "data": {"id": "x" * 201}},
    ],
)
def test_parse_refuses_what_is_not_an_event(payload: object) -> None:
    with pytest.raises(InvalidInput):
        parse_event("wh_1", payload)


@pytest.mark.parametrize("webhook_id", ["", "wh 1", "wh\n1", "x" * 201, "wh_é", None, 5])
def test_parse_refuses_bad_webhook_ids(webhook_id: object) -> None:
    with pytest.raises(InvalidInput):
        parse_event(webhook_id, _job_event())


def _count(session: Session, model: type[Any]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_record_writes_delivery_and_event_once(sessions: sessionmaker[Session]) -> None:
    parsed = parse_event("wh_1", _job_event())
    with sessions.begin() as session:
        assert record_delivery(session, parsed) == DeliveryOutcome.RECORDED
    for _ in range(3):
        with sessions.begin() as session:
            assert record_delivery(session, parsed) == DeliveryOutcome.DUPLICATE
    with sessions() as session:
        assert _count(session, WebhookDelivery) == 1
        assert _count(session, JobEvent) == 1
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert (delivery.webhook_id, delivery.event_type, delivery.openai_job_id) == (
            "wh_1",
            "fine_tuning.job.succeeded",
            "ftjob-abc123",
        )
        event = find_event(session, "ftjob-abc123")
        assert event is not None
        assert (event.source, event.state, event.enqueued_at) == (
            webhooks.SOURCE,
            EventState.RECEIVED,
            None,
        )


def test_second_webhook_id_for_same_job_keeps_one_job_event(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        assert record_delivery(session, parse_event("wh_1", _job_event())) == "recorded"
        assert record_delivery(session, parse_event("wh_2", _job_event())) == "recorded"
    with sessions() as session:
        assert _count(session, WebhookDelivery) == 2
        assert _count(session, JobEvent) == 1


def test_other_event_types_write_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        parsed = parse_event("wh_1", {"type": "batch.completed", "data": {"id": "b"}})
        assert record_delivery(session, parsed) == DeliveryOutcome.IGNORED
    with sessions() as session:
        assert _count(session, WebhookDelivery) == 0
        assert _count(session, JobEvent) == 0


def test_rolled_back_record_leaves_nothing(sessions: sessionmaker[Session]) -> None:
    """Delivery and job event share the caller's transaction: both or neither."""
    with sessions() as session:
        session.begin()
        record_delivery(session, parse_event("wh_1", _job_event()))
        session.rollback()
    with sessions() as session:
        assert _count(session, WebhookDelivery) == 0
        assert _count(session, JobEvent) == 0
    with sessions.begin() as session:  # and the id is still free
        assert record_delivery(session, parse_event("wh_1", _job_event())) == "recorded"


def test_concurrent_deliveries_of_one_id_record_once(pg_url: str) -> None:
    """Eight sessions insert the same webhook-id at once: exactly one is RECORDED."""
    factory = session_factory(pg_url)
    parsed = parse_event("wh_race", _job_event("ftjob-race"))
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            with factory.begin() as session:
                barrier.wait(10)
                outcomes.append(record_delivery(session, parsed))
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(outcomes) == ["duplicate"] * 7 + ["recorded"]
    with factory() as session:
        assert _count(session, WebhookDelivery) == 1
        assert _count(session, JobEvent) == 1
