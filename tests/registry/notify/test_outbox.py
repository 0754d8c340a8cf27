"""The outbox: every notifiable change writes its event in its own transaction, numbered per
tenant without gaps, with one delivery per endpoint that wants it (PostgreSQL and SQLite)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from registry import operations, tenants
from registry.jobs import events, pipeline
from registry.notify import outbox as outbox_module
from registry.notify.models import NotificationDelivery
from registry.notify.types import EventType
from tests.factories import deploy_new, make_run, make_tenant
from tests.registry.notify.support import add, deliveries, outbox, types


def test_deploys_are_numbered_per_tenant_and_fanned_out_to_matching_endpoints(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session, session.begin():
        acme = make_tenant(session, "acme", require_evaluation=False)
        beta = make_tenant(session, "beta", require_evaluation=False)
        acme_id, beta_id = acme.id, beta.id
    everything = add(sessions, "all").endpoint
    only_acme = add(sessions, "acme-hook", tenant_ref="acme").endpoint
    rejections = add(sessions, "rejects", events=["deployment.rejected"]).endpoint
    with sessions() as session, session.begin():
        for tenant_id in (acme_id, acme_id, beta_id):
            tenant = session.get_one(type(acme), tenant_id)
            deploy_new(session, tenant)

    rows = outbox(sessions)
    assert [(r.stream, r.seq, r.type) for r in rows] == sorted(
        [
            (str(acme_id), 1, "deployment.applied"),
            (str(acme_id), 2, "deployment.applied"),
            (str(beta_id), 1, "deployment.applied"),
        ]
    )
    assert len(deliveries(sessions, everything.id)) == 3
    assert [d.seq for d in deliveries(sessions, only_acme.id)] == [1, 2]
    assert deliveries(sessions, rejections.id) == []

    second = next(r for r in rows if r.stream == str(acme_id) and r.seq == 2)
    data = second.data
    assert data["tenant"] == {"id": str(acme_id), "slug": "acme"}
    assert data["version"] == 2 and data["deployment"]["status"] == "promoted"
    assert data["split_before"] == {"1": 100} and data["split_after"] == {"2": 100}
    assert data["actor"] == "worker" and "immediate at 100%" in data["reason"]


def test_a_change_that_rolls_back_leaves_no_notification(sessions: sessionmaker[Session]) -> None:
    add(sessions, "all")
    with sessions() as session, session.begin():
        make_tenant(session, "acme", require_evaluation=False)
    with pytest.raises(RuntimeError), sessions() as session, session.begin():
        tenant = make_tenant(session, "other", require_evaluation=False)
        deploy_new(session, tenant)
        assert session.info.get(outbox_module.PENDING_KEY)
        raise RuntimeError("the change fails after its event was written")
    assert outbox(sessions) == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(NotificationDelivery)) == 0


def test_gate_outcomes_are_told_once_per_deployment_and_outcome(
    sessions: sessionmaker[Session],
) -> None:
    from registry import deployments

    with sessions() as session, session.begin():
        tenant = make_tenant(session, "gated")
        waiting = make_run(session, tenant)
        rejected = make_run(session, tenant)
        # Redelivered events decide again: still one notice each.
        for _ in range(2):
            deployments.deploy(session, tenant.id, waiting.id)
        from tests.factories import make_evaluation

        make_evaluation(session, rejected, "reject")
        deployments.deploy(session, tenant.id, rejected.id)
        make_evaluation(session, waiting, "approve")
        deployments.deploy(session, tenant.id, waiting.id)
        deployments.deploy(session, tenant.id, waiting.id)
    assert types(sessions) == [
        "deployment.awaiting_evaluation",
        "deployment.rejected",
        "deployment.applied",
    ]
    assert [r.seq for r in outbox(sessions)] == [1, 2, 3]


def test_operations_and_failed_job_events_are_told(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        tenant = make_tenant(session, "ops", require_evaluation=False)
        deploy_new(session, tenant)
        deploy_new(session, tenant)
        rollback = operations.queue_operation(session, "ops", "rollback")
        operations.run_operation(session, rollback.id)
        failing = operations.queue_operation(session, "ops", "rollback")
        operations.run_operation(session, failing.id)  # v1 has nothing to return to
        operations.run_operation(session, failing.id)  # a redelivery: nothing more
        events.accept_event(session, "ftjob-doomed", "ops", "cli")
        pipeline.fail_job(session, "ftjob-doomed", "OpenAI says the job does not exist")
        pipeline.fail_job(session, "ftjob-doomed", "again")  # already failed: told once
        events.accept_event(session, "ftjob-orphan", None, "cli")
        pipeline.fail_job(session, "ftjob-orphan", "no tenant anywhere")
    rows = {(r.type, r.stream): r for r in outbox(sessions)}
    kinds = [r.type for r in sorted(outbox(sessions), key=lambda r: (r.stream, r.seq))]
    assert kinds.count("operation.succeeded") == 1 and kinds.count("operation.failed") == 1
    succeeded = next(r for (t, _), r in rows.items() if t == "operation.succeeded")
    assert succeeded.data["split_before"] == {"2": 100}
    assert succeeded.data["split_after"] == {"1": 100}
    assert succeeded.data["actor"] == "operator:operator"
    failed = next(r for (t, _), r in rows.items() if t == "operation.failed")
    assert "nothing to roll back" in failed.data["operation"]["error"]
    assert kinds.count("job.failed") == 2
    assert rows[("job.failed", "global")].data["job_id"] == "ftjob-orphan"


def test_emit_refuses_an_unknown_type(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        with pytest.raises(ValueError):
            outbox_module.emit(session, None, "deployment.exploded", {})
        outbox_module.emit(session, None, EventType.TENANT_PAUSED, {"reason": "x"})
        assert outbox_module.emit(session, None, EventType.TENANT_PAUSED, {}, dedupe_key="k")
        assert (
            outbox_module.emit(session, None, EventType.TENANT_PAUSED, {}, dedupe_key="k") is None
        )
    assert [r.seq for r in outbox(sessions)] == [1, 2]


def test_pause_and_resume_are_told_once_each(sessions: sessionmaker[Session]) -> None:
    add(sessions, "all")
    with sessions() as session, session.begin():
        make_tenant(session, "held")
    for _ in range(2):  # the second pause and resume change nothing, so tell nothing
        with sessions() as session, session.begin():
            tenants.pause_tenant(session, "held", actor="ops", reason="incident 42")
    with sessions() as session, session.begin():
        tenants.resume_tenant(session, "held", actor="ops")
    with sessions() as session, session.begin():
        tenants.resume_tenant(session, "held", actor="ops")
    told = [e for e in outbox(sessions) if e.type.startswith("tenant.")]
    assert [e.type for e in told] == [EventType.TENANT_PAUSED, EventType.TENANT_RESUMED]
    assert told[0].data["reason"] == "incident 42" and told[0].data["actor"] == "ops"
