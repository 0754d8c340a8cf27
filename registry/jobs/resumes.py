"""An evaluation's resume of its run's deployment, never lost: requested when the evaluation is
recorded (`resume_requested_at`), handed to the broker after the commit (`resume_sent_at`, by
the message's `on_sent` step), and ended by the worker with its outcome (`resume_ended_at`,
`resume_outcome`): the deployment it decided, or why there was nothing to resume (say, the job
has not succeeded yet: its own job_finished event deploys the run when it does).

Beat's reconciler (`ftdeploy.reconcile_events`) calls `reconcile` each period, as it does for
job events and queued operations:
- requested but never sent (the broker was down when the door recorded it, or the door died
  between its commit and its send) and older than the grace period: sent again;
- sent but not ended long after (`stalled_after`: the broker lost the message): sent again, once
  per period, while the run's deployment still waits; one whose deployment was decided
  meanwhile ends with that.

An evaluation recorded without a resume has none of these set: nothing tells the worker, and
the reconciler never looks at it. Re-sending is safe: resuming is idempotent (`deploy`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from registry import clock, messages
from registry.masking import mask
from registry.models import Deployment, DeploymentStatus, Evaluation

BATCH = 1000


def request_resume(session: Session, evaluation: Evaluation) -> None:
    """Note that the evaluation asks for its run's deployment to be resumed, and send
    `ftdeploy.evaluation_recorded` after the commit; once the broker has it, the resume is
    marked sent. Only flushes."""
    evaluation.resume_requested_at = clock.now()
    session.flush()
    _send(session, evaluation.run_id, evaluation.id)


def _send(session: Session, run_id: uuid.UUID, evaluation_id: uuid.UUID) -> None:
    messages.send_after_commit(
        session,
        messages.EVALUATION_RECORDED,
        (str(run_id),),
        {"evaluation_id": str(evaluation_id)},
        on_sent=partial(mark_sent, evaluation_id=evaluation_id),
    )


def mark_sent(session: Session, evaluation_id: uuid.UUID) -> None:
    session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.resume_sent_at.is_(None))
        .values(resume_sent_at=clock.now())
    )


def end_resume(session: Session, run_id: uuid.UUID, evaluation_id: uuid.UUID, outcome: str) -> bool:
    """End the requested resume of the run's evaluation with its outcome; True if this call
    ended it. Idempotent: an ended resume keeps its first outcome; an evaluation recorded
    without a resume, or of another run, is left alone."""
    ended = session.execute(
        update(Evaluation)
        .where(
            Evaluation.id == evaluation_id,
            Evaluation.run_id == run_id,
            Evaluation.resume_requested_at.is_not(None),
            Evaluation.resume_ended_at.is_(None),
        )
        # The outcome may quote an external error: masked, and bounded.
        .values(resume_ended_at=clock.now(), resume_outcome=mask(outcome)[:2000])
    )
    return bool(getattr(ended, "rowcount", 0))


@dataclass(frozen=True)
class Reconciled:
    unsent: list[uuid.UUID]
    stalled: list[uuid.UUID]
    ended: list[uuid.UUID]


def reconcile(
    session: Session,
    *,
    grace: timedelta,
    stalled_after: timedelta,
    now: datetime | None = None,
) -> Reconciled:
    """Send again, after the commit, the resumes the module docstring lists, and end those whose
    deployment no longer waits; in the caller's transaction. Rows another reconciler holds are
    skipped. Safe to repeat and to run beside itself."""
    now = now or clock.now()
    open_resume = (
        Evaluation.resume_requested_at.is_not(None),
        Evaluation.resume_ended_at.is_(None),
    )
    unsent = list(
        session.scalars(
            select(Evaluation)
            .where(
                *open_resume,
                Evaluation.resume_sent_at.is_(None),
                Evaluation.resume_requested_at < now - grace,
            )
            .order_by(Evaluation.resume_requested_at)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
    )
    candidates = session.execute(
        select(Evaluation, Deployment.status)
        .outerjoin(Deployment, Deployment.run_id == Evaluation.run_id)
        .where(
            *open_resume,
            Evaluation.resume_sent_at.is_not(None),
            Evaluation.resume_sent_at < now - stalled_after,
        )
        .order_by(Evaluation.resume_sent_at)
        .limit(BATCH)
        .with_for_update(skip_locked=True, of=Evaluation)
    ).all()
    stalled: list[Evaluation] = []
    ended: list[uuid.UUID] = []
    for evaluation, status in candidates:
        if status is None or status == DeploymentStatus.AWAITING_EVALUATION:
            stalled.append(evaluation)
        else:
            end_resume(
                session,
                evaluation.run_id,
                evaluation.id,
                f"nothing to resume: the deployment is {status}",
            )
            ended.append(evaluation.id)
    if stalled:
        # Touched now: each is sent again at most once per `stalled_after`.
        session.execute(
            update(Evaluation)
            .where(Evaluation.id.in_([e.id for e in stalled]))
            .values(resume_sent_at=now)
        )
    for evaluation in unsent + stalled:
        _send(session, evaluation.run_id, evaluation.id)
    return Reconciled([e.id for e in unsent], [e.id for e in stalled], ended)
