"""Issue 10, items 1, 3 and 5 — job events an operator can trust: a finished or attributed
event is never given another tenant (the refusal is recorded and shown), failed events are
re-sent in bulk after an outage, and an event without a tenant says how to give it one."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from registry.db import unit_of_work
from registry.jobs import events, webhooks
from registry.models import AuditEvent, EventState, JobEvent
from tests.factories import make_run, make_tenant
from tests.worker.cli_support import ok_json, run


def _done_job(url: str, hint: str | None = None) -> str:
    """A job of `acme` whose event is done (tenant from the job's metadata: no hint)."""
    with unit_of_work(url) as session:
        acme = make_tenant(session, "acme")
        make_tenant(session, "other")
        job_id = make_run(session, acme).openai_job_id
        events.accept_event(session, job_id, hint, "webhook")
        events.finish_event(session, job_id, EventState.DONE, "deployment active")
    return job_id


def _event(url: str, job_id: str) -> JobEvent:
    with unit_of_work(url) as session:
        event = events.find_event(session, job_id)
        assert event is not None
        session.expunge(event)
        return event


def test_item1_wrong_tenant_on_a_done_job_is_refused_and_recorded(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = _done_job(cli_db)

    code, out, err = run(capsys, "job-finished", job_id, "--tenant", "other")
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1
    assert "belongs to tenant 'acme'" in err and "not reassigned to 'other'" in err

    event = _event(cli_db, job_id)
    assert (event.tenant_hint, event.state) == (None, EventState.DONE)
    [listed] = ok_json(capsys, "events")  # type: ignore[misc]
    assert listed["state"] == "done"
    assert [(c["tenant"], c["source"]) for c in listed["refused_claims"]] == [("other", "cli")]
    assert "refused 1x: other via cli" in run(capsys, "events")[1]

    # The attempt is in the audit trail of the tenant the event kept, not in the other's.
    trail = ok_json(capsys, "history", "acme")
    assert isinstance(trail, list)
    refused = [r for r in trail if r["action"] == "event_claim_refused"]
    assert [r["before"] for r in refused] == [{"tenant": "acme"}]
    activity = ok_json(capsys, "activity", "other")
    assert isinstance(activity, list)
    assert all(job_id not in row["subject"] for row in activity)


def test_item1_attributed_failed_event_keeps_its_tenant(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with unit_of_work(cli_db) as session:
        make_tenant(session, "acme")
        make_tenant(session, "other")
        events.accept_event(session, "ftjob-hinted", "acme", "cli")
        events.finish_event(session, "ftjob-hinted", EventState.FAILED, "OpenAI said 401")

    code, _, err = run(capsys, "job-finished", "ftjob-hinted", "--tenant", "other")
    assert code == 1 and "not reassigned" in err
    event = _event(cli_db, "ftjob-hinted")
    assert (event.tenant_hint, event.state) == ("acme", EventState.FAILED)  # not reopened either


def test_item1_broker_message_with_another_tenant_does_not_rewrite(cli_db: str) -> None:
    job_id = _done_job(cli_db, hint="acme")
    with unit_of_work(cli_db) as session:
        events.start_attempt(session, job_id, "other")
    event = _event(cli_db, job_id)
    assert (event.tenant_hint, event.state) == ("acme", EventState.DONE)
    with unit_of_work(cli_db) as session:
        refused = session.scalars(select(AuditEvent.actor)).all()
    assert "broker" in refused


def test_item1_webhook_redelivery_leaves_a_done_event_alone(cli_db: str) -> None:
    job_id = _done_job(cli_db, hint="acme")
    parsed = webhooks.parse_event(
        "msg_again", {"type": "fine_tuning.job.succeeded", "data": {"id": job_id}}
    )
    with unit_of_work(cli_db) as session:
        assert webhooks.record_delivery(session, parsed) == webhooks.DeliveryOutcome.RECORDED
    event = _event(cli_db, job_id)
    assert (event.tenant_hint, event.state, event.source) == ("acme", EventState.DONE, "webhook")


def test_item1_same_tenant_by_id_is_no_refusal(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = _done_job(cli_db)
    with unit_of_work(cli_db) as session:
        from registry.tenants import find_tenant

        acme_id = str(find_tenant(session, "acme").id)
    code, _, err = run(capsys, "job-finished", job_id, "--tenant", acme_id)
    assert (code, err) == (0, "")
    with unit_of_work(cli_db) as session:
        assert session.scalars(select(AuditEvent.action)).all().count("event_claim_refused") == 0


def test_item5_unattributed_failed_event_takes_the_tenant_named(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with unit_of_work(cli_db) as session:
        make_tenant(session, "acme")
        events.accept_event(session, "ftjob-nometa", None, "webhook")
        events.finish_event(session, "ftjob-nometa", EventState.FAILED, "no tenant")

    code, _, err = run(capsys, "job-finished", "ftjob-nometa", "--tenant", "acme")
    assert (code, err) == (0, "")
    event = _event(cli_db, "ftjob-nometa")
    assert (event.tenant_hint, event.state) == ("acme", EventState.RECEIVED)


def _failed(url: str, job_id: str, tenant: str | None, source: str = "cli") -> None:
    with unit_of_work(url) as session:
        events.accept_event(session, job_id, tenant, source)
        events.finish_event(session, job_id, EventState.FAILED, "OpenAI said 401")


def test_item3_events_retry_resends_failed_events_in_bulk(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with unit_of_work(cli_db) as session:
        make_tenant(session, "acme")
        make_tenant(session, "other")
    _failed(cli_db, "ftjob-a1", "acme")
    _failed(cli_db, "ftjob-a2", "acme")
    _failed(cli_db, "ftjob-o1", "other")
    done = _done_job_of(cli_db, "acme")

    result = ok_json(capsys, "events", "retry", "--tenant", "acme")
    assert isinstance(result, dict)
    assert result["resent"] == 2
    assert sorted(e["job_id"] for e in result["events"]) == ["ftjob-a1", "ftjob-a2"]
    for job_id in ("ftjob-a1", "ftjob-a2"):
        event = _event(cli_db, job_id)
        # Re-opened in the registry, then handed to the broker by the job-finished send path.
        assert (event.state, event.attempts) == (EventState.RECEIVED, 0)
        assert event.enqueued_at is not None
    assert _event(cli_db, "ftjob-o1").state == EventState.FAILED
    assert _event(cli_db, done).state == EventState.DONE

    code, out, err = run(capsys, "events", "retry")
    assert (code, err) == (0, "")
    assert out.startswith("re-sent 1 failed event(s):") and "ftjob-o1 (other)" in out
    assert run(capsys, "events", "retry")[1] == "no failed events to retry\n"


def test_item3_events_retry_since(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import UTC, datetime

    from registry import clock

    with clock.use(lambda: datetime(2020, 1, 1, tzinfo=UTC)):
        _failed(cli_db, "ftjob-old", None)
    _failed(cli_db, "ftjob-new", None)
    result = ok_json(capsys, "events", "retry", "--since", "1h")
    assert isinstance(result, dict)
    assert [e["job_id"] for e in result["events"]] == ["ftjob-new"]
    assert run(capsys, "events", "retry", "--since", "yesterday")[0] == 2
    assert run(capsys, "events", "retry", "--state", "done")[0] == 2


def _done_job_of(url: str, slug: str) -> str:
    with unit_of_work(url) as session:
        from registry.tenants import find_tenant

        job_id = make_run(session, find_tenant(session, slug)).openai_job_id
        events.accept_event(session, job_id, None, "webhook")
        events.finish_event(session, job_id, EventState.DONE, "deployment active")
    return job_id


def test_item5_event_without_tenant_says_what_to_do(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from registry.errors import TenantUnknownForJob
    from registry.jobs import pipeline, runs

    with unit_of_work(cli_db) as session:
        events.accept_event(session, "ftjob-webhook", None, "webhook")
        with pytest.raises(TenantUnknownForJob) as refused:
            runs.tenant_for_job(session, "ftjob-webhook", from_event=None, from_job=None)
        pipeline.fail_job(session, "ftjob-webhook", str(refused.value))

    [listed] = ok_json(capsys, "events", "--state", "failed")  # type: ignore[misc]
    assert "metadata={'tenant': SLUG}" in listed["outcome"]
    assert "ftdeploy job-finished ftjob-webhook --tenant SLUG" in listed["outcome"]
