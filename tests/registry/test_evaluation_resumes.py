"""An evaluation's resume of its run's deployment is never lost: it is stored as requested, sent
and ended; the reconciler sends again one never sent and one sent but lost while the deployment
still waits; an evaluation recorded without a resume asks for nothing. On PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from registry import clock, deployments, messages
from registry.errors import RunNotDeployable
from registry.jobs import pipeline, resumes, runs
from registry.models import DeploymentStatus, Evaluation
from tests.factories import make_run, make_tenant

GRACE = timedelta(seconds=30)
STALLED = timedelta(hours=2)


def _waiting_run(sessions: sessionmaker[Session], status: str = "succeeded") -> tuple[str, str]:
    """A run whose deployment waits for an evaluation (the policy requires one); its job id
    and run id."""
    with sessions() as session, session.begin():
        tenant = make_tenant(session, require_evaluation=True)
        run = make_run(session, tenant, status=status)
        if status == "succeeded":
            result = deployments.deploy(session, tenant.id, run.id)
            assert result.status == DeploymentStatus.AWAITING_EVALUATION
        return run.openai_job_id, str(run.id)


def _record(sessions: sessionmaker[Session], job_id: str, *, resume: bool) -> uuid.UUID:
    with sessions() as session, session.begin():
        return runs.record_evaluation(
            session, job_id, "approve", {"accuracy": 0.9}, resume=resume
        ).id


def _evaluation(sessions: sessionmaker[Session], evaluation_id: uuid.UUID) -> Evaluation:
    with sessions() as session:
        return session.get_one(Evaluation, evaluation_id)


def _reconcile(sessions: sessionmaker[Session], later: timedelta) -> resumes.Reconciled:
    with sessions() as session, session.begin():
        return resumes.reconcile(
            session, grace=GRACE, stalled_after=STALLED, now=clock.now() + later
        )


def test_a_resume_is_requested_then_marked_sent_and_no_resume_asks_for_nothing(
    sessions: sessionmaker[Session], sent_messages: list[messages.Message]
) -> None:
    job_id, run_id = _waiting_run(sessions)
    resumed = _record(sessions, job_id, resume=True)
    quiet = _record(sessions, job_id, resume=False)
    assert [(m.task, m.args, dict(m.kwargs)) for m in sent_messages] == [
        (messages.EVALUATION_RECORDED, (run_id,), {"evaluation_id": str(resumed)})
    ]
    stored = _evaluation(sessions, resumed)
    assert stored.resume_requested_at is not None and stored.resume_sent_at is not None
    assert stored.resume_ended_at is None and stored.resume_outcome is None
    told_nothing = _evaluation(sessions, quiet)
    assert (told_nothing.resume_requested_at, told_nothing.resume_sent_at) == (None, None)
    # Neither is anything the reconciler sends, however late.
    assert _reconcile(sessions, timedelta(hours=1)) == resumes.Reconciled([], [], [])


def test_the_schema_refuses_a_resume_sent_or_ended_that_was_never_requested(
    sessions: sessionmaker[Session],
) -> None:
    job_id, _ = _waiting_run(sessions)
    evaluation_id = _record(sessions, job_id, resume=False)
    for values in (
        {"resume_sent_at": clock.now()},
        {"resume_ended_at": clock.now(), "resume_outcome": "done"},
    ):
        with sessions() as session, session.begin(), pytest.raises(IntegrityError):
            session.execute(update(Evaluation).where(Evaluation.id == evaluation_id).values(values))
    with sessions() as session, session.begin(), pytest.raises(IntegrityError):
        # Ended, even when requested, means with its outcome.
        session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id)
            .values(resume_requested_at=clock.now(), resume_ended_at=clock.now())
        )


def test_the_reconciler_sends_a_resume_never_sent_once_past_the_grace_period(
    sessions: sessionmaker[Session],
) -> None:
    job_id, run_id = _waiting_run(sessions)
    # No sender: the broker is down as the evaluation is recorded.
    evaluation_id = _record(sessions, job_id, resume=True)
    unsent = _evaluation(sessions, evaluation_id)
    assert unsent.resume_requested_at is not None and unsent.resume_sent_at is None

    sent: list[messages.Message] = []
    messages.set_sender(sent.append)
    assert _reconcile(sessions, timedelta(0)) == resumes.Reconciled([], [], [])  # within grace
    found = _reconcile(sessions, timedelta(seconds=60))
    assert found == resumes.Reconciled([evaluation_id], [], [])
    assert [(m.args, dict(m.kwargs)) for m in sent] == [
        ((run_id,), {"evaluation_id": str(evaluation_id)})
    ]
    assert _evaluation(sessions, evaluation_id).resume_sent_at is not None
    # Sent now: the next period sends nothing again (until it counts as lost).
    assert _reconcile(sessions, timedelta(seconds=60)) == resumes.Reconciled([], [], [])
    assert len(sent) == 1


def test_the_reconciler_sends_a_lost_resume_again_while_the_deployment_waits(
    sessions: sessionmaker[Session], sent_messages: list[messages.Message]
) -> None:
    job_id, run_id = _waiting_run(sessions)
    evaluation_id = _record(sessions, job_id, resume=True)
    assert len(sent_messages) == 1  # sent, and then lost: nothing ended it
    assert _reconcile(sessions, timedelta(hours=1)) == resumes.Reconciled([], [], [])
    found = _reconcile(sessions, timedelta(hours=3))
    assert found == resumes.Reconciled([], [evaluation_id], [])
    assert len(sent_messages) == 2
    # Touched: not sent again in the same period.
    assert _reconcile(sessions, timedelta(hours=3)) == resumes.Reconciled([], [], [])

    # The worker resumes it: the deployment is decided and the resume ends with it.
    with sessions() as session, session.begin():
        result = pipeline.resume_deployment(session, run_id, str(evaluation_id))
    assert result.status == DeploymentStatus.PROMOTED
    done = _evaluation(sessions, evaluation_id)
    assert done.resume_ended_at is not None
    assert done.resume_outcome is not None and done.resume_outcome.startswith("deployment promoted")
    assert _reconcile(sessions, timedelta(hours=9)) == resumes.Reconciled([], [], [])


def test_a_lost_resume_whose_deployment_was_decided_meanwhile_ends_with_that(
    sessions: sessionmaker[Session], sent_messages: list[messages.Message]
) -> None:
    job_id, run_id = _waiting_run(sessions)
    lost = _record(sessions, job_id, resume=True)
    other = _record(sessions, job_id, resume=True)
    with sessions() as session, session.begin():
        pipeline.resume_deployment(session, run_id, str(other))
    found = _reconcile(sessions, timedelta(hours=3))
    assert found == resumes.Reconciled([], [], [lost])
    assert len(sent_messages) == 2  # not sent again
    ended = _evaluation(sessions, lost)
    assert ended.resume_outcome == "nothing to resume: the deployment is promoted"


def test_a_resume_of_a_run_not_deployable_yet_ends_with_that_reason(
    sessions: sessionmaker[Session], sent_messages: list[messages.Message]
) -> None:
    job_id, run_id = _waiting_run(sessions, status="running")
    evaluation_id = _record(sessions, job_id, resume=True)
    with sessions() as session, session.begin(), pytest.raises(RunNotDeployable) as refused:
        pipeline.resume_deployment(session, run_id, str(evaluation_id))
    with sessions() as session, session.begin():
        # What the task does with the refusal; an evaluation of another run is left alone.
        pipeline.end_resume(session, str(uuid.uuid4()), str(evaluation_id), "elsewhere")
        pipeline.end_resume(session, run_id, str(evaluation_id), f"waiting: {refused.value}")
    ended = _evaluation(sessions, evaluation_id)
    assert ended.resume_ended_at is not None
    assert ended.resume_outcome == f"waiting: {refused.value}"
    assert _reconcile(sessions, timedelta(hours=9)) == resumes.Reconciled([], [], [])
