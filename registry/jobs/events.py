""" "Fine-tuning job finished" events: accepted durably, ended as done or failed, never dropped."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache, partial
from typing import Any, cast

from sqlalchemy import Boolean, Table, and_, bindparam, case, func, select, true, update
from sqlalchemy.orm import Session

from registry import audit_events, clock, dialect, messages, rows, validation
from registry.errors import EventClaimRefused, FtdeployError
from registry.masking import mask
from registry.models import EventState, FinetuningRun, JobEvent, Tenant, UTCDateTime
from registry.tenants import find_tenant


def accept_event(session: Session, job_id: str, tenant: str | None, source: str) -> JobEvent:
    """Record that an event for `job_id` arrived. Idempotent (one row per job, whatever the
    number of deliveries); safe under concurrency (INSERT … ON CONFLICT DO NOTHING). An event
    that had failed is reopened, so a redelivery after a fix (say, the tenant now exists) runs.
    A finished or attributed event is never given another tenant (see `claim_event`)."""
    return claim_event(session, job_id, tenant, source)[0]


def claim_event(
    session: Session, job_id: str, tenant: str | None, source: str
) -> tuple[JobEvent, EventClaimRefused | None]:
    """`accept_event`, telling the door whether the tenant it named was refused.

    An event belongs to a tenant once its job has a run row or it names an existing tenant.
    Naming another tenant for such an event (or for one that is done) changes nothing on it:
    the refusal is written to the audit trail of the tenant the event keeps, in the caller's
    transaction, and returned (not raised) so the door can commit it and then report it. An
    event without a tenant (say, a webhook whose job had no `metadata["tenant"]`) takes the one
    named, and is reopened if it had failed: that is how such an event is fixed.
    """
    job_id = validation.job_id(job_id)
    tenant = validation.optional_tenant_ref(tenant)
    now = clock.now()
    values = {
        "openai_job_id": job_id,
        "tenant_hint": tenant,
        "source": source,
        "state": EventState.RECEIVED,
        "received_at": now,
        "updated_at": now,
        "attempts": 0,
        "crashes": 0,
    }
    session.execute(
        dialect.insert(session, JobEvent)
        .values(id=uuid.uuid4(), **values)
        .on_conflict_do_nothing(index_elements=["openai_job_id"])
    )
    event = session.scalars(
        select(JobEvent)
        .where(JobEvent.openai_job_id == job_id)
        .execution_options(populate_existing=True)
    ).one()
    owner = _owner(session, event)
    if tenant is not None and owner is not None and not _names(owner, tenant):
        refusal = EventClaimRefused(job_id, event.state, owner.slug, tenant)
        audit_events.record_audit_event(
            session,
            owner.id,
            audit_events.EVENT_CLAIM_REFUSED,
            actor=source,
            reason=str(refusal),
            subject=f"job {job_id}",
            changes={
                "before": {"tenant": owner.slug},
                "after": {"tenant": owner.slug},
                "refused": {"tenant": tenant, "source": source},
            },
        )
        return event, refusal
    if event.state == EventState.DONE:
        return event, None  # finished: nothing on it changes
    if tenant is not None and owner is None:
        event.tenant_hint = tenant
    if event.state == EventState.FAILED:
        event.state = EventState.RECEIVED
        event.attempts = 0
        event.updated_at = now
    session.flush()
    return event, None


def _owner(session: Session, event: JobEvent) -> Tenant | None:
    """The tenant the event belongs to: its run's, else the existing tenant it names."""
    tenant_id = session.scalar(
        select(FinetuningRun.tenant_id).where(FinetuningRun.openai_job_id == event.openai_job_id)
    )
    if tenant_id is not None:
        return session.get(Tenant, tenant_id)
    if event.tenant_hint is None:
        return None
    try:
        return find_tenant(session, event.tenant_hint)
    except FtdeployError:  # names no tenant (or not a valid one): the event is not attributed
        return None


def _names(tenant: Tenant, ref: str) -> bool:
    return ref in (tenant.slug, str(tenant.id))


def publish_event(
    session: Session, job_id: str, tenant: str | None, source: str
) -> EventClaimRefused | None:
    """Claim the event (`claim_event`) and hand it to the worker after the commit; once the
    broker has it, the event is marked enqueued. A crash or a failed send in between leaves the
    event unenqueued, and the reconciler (`reconcile`) sends it again: the task is idempotent.
    A refused claim sends nothing; the refusal is returned for the door to raise after it has
    committed the audit event."""
    event, refusal = claim_event(session, job_id, tenant, source)
    if refusal is None:
        _send(session, event.openai_job_id, tenant)
    return refusal


def republish_event(session: Session, job_id: str) -> JobEvent:
    """Re-open a failed event (as a redelivery does) and send it to the worker again after the
    commit, with the tenant it already names."""
    event = accept_event(session, job_id, None, "retry")
    _send(session, event.openai_job_id, event.tenant_hint)
    return event


def _send(session: Session, job_id: str, tenant: str | None = None) -> None:
    messages.send_after_commit(
        session,
        messages.JOB_FINISHED,
        (job_id,),
        {"tenant": tenant},
        on_sent=partial(mark_enqueued, job_id=job_id),
    )


def find_event(session: Session, job_id: str) -> JobEvent | None:
    return session.scalars(
        select(JobEvent)
        .where(JobEvent.openai_job_id == job_id)
        .execution_options(populate_existing=True)
    ).one_or_none()


@dataclass(frozen=True)
class AttemptCount:
    """The event as one attempt found it, once counted."""

    tenant_hint: str | None
    crashes: int
    received_at: datetime


def start_attempt(
    session: Session, job_id: str, tenant: str | None, *, redelivered: bool = True
) -> AttemptCount:
    """Count one more attempt at the event, creating it if it came straight from the broker.

    A redelivered message whose previous attempt is still marked in flight counts a crash: the
    process died while handling it (or outlived the broker's visibility timeout). The caller
    gives up on an event that crashes too often, so a poison event cannot loop forever. A fresh
    duplicate (`redelivered=False`: the event was sent twice) running beside another attempt is
    no crash.

    The claim is `claim_event`'s (a failed event is reopened, a done one left done, another
    tenant refused); when the message names no tenant or the one the event has, that claim and
    the count are one upsert, which locks the row, so duplicates starting side by side are
    counted one after the other and none is lost.
    """
    counted = count_attempt(session, job_id, tenant, redelivered=redelivered)
    if counted is not None:
        return counted
    # The message names a tenant the event does not: the claim decides (refusal or attribution).
    event = accept_event(session, job_id, tenant, "broker")
    session.refresh(event, with_for_update=True)
    now = clock.now()
    if event.in_flight_since is not None and redelivered:
        event.crashes += 1
    event.attempts += 1
    event.in_flight_since = now
    event.updated_at = now
    if event.enqueued_at is None:
        event.enqueued_at = now
    session.flush()
    return AttemptCount(event.tenant_hint, event.crashes, event.received_at)


def count_attempt(
    session: Session, job_id: str, tenant: str | None, *, redelivered: bool = True
) -> AttemptCount | None:
    """`start_attempt` when it takes one statement: the message names no tenant or the one the
    event has. None otherwise, and then nothing was written (call `start_attempt`, which claims
    the event first, in a transaction). One statement, atomic by itself, so it may run without
    a transaction around it (`registry.db.one_statement`)."""
    job_id = validation.job_id(job_id)
    tenant = validation.optional_tenant_ref(tenant)
    counted = _count_attempt(session, job_id, tenant, redelivered).one_or_none()
    if counted is None:
        return None
    return AttemptCount(counted.tenant_hint, counted.crashes, counted.received_at)


def _count_attempt(session: Session, job_id: str, tenant: str | None, redelivered: bool) -> Any:
    """INSERT the event counted once, or on conflict count one more attempt (reopening a failed
    event, as `claim_event` does), unless the message names another tenant than the event."""
    statement = _count_statement(session.get_bind().dialect.name, tenant is not None)
    now = clock.now()
    params = {"id": uuid.uuid4(), "job_id": job_id, "tenant": tenant, "now": now}
    return rows.execute(session, statement, {**params, "redelivered": redelivered})


@lru_cache(maxsize=8)
def _count_statement(dialect_name: str, names_tenant: bool) -> Any:
    # Built once per database and shape: building it costs more than running it.
    events = JobEvent.__table__.c
    now = bindparam("now", type_=UTCDateTime())
    reopened = events.state == EventState.FAILED
    statement = dialect.insert_for(dialect_name, JobEvent.__table__).values(
        id=bindparam("id"),
        openai_job_id=bindparam("job_id"),
        tenant_hint=bindparam("tenant"),
        source="broker",
        state=EventState.RECEIVED,
        received_at=now,
        updated_at=now,
        enqueued_at=now,
        in_flight_since=now,
        attempts=1,
        crashes=0,
    )
    redelivered = bindparam("redelivered", type_=Boolean())
    same_tenant = (
        events.tenant_hint.is_not_distinct_from(bindparam("tenant")) if names_tenant else true()
    )
    return statement.on_conflict_do_update(
        index_elements=["openai_job_id"],
        set_={
            "crashes": events.crashes
            + case((and_(events.in_flight_since.is_not(None), redelivered), 1), else_=0),
            "attempts": case((reopened, 1), else_=events.attempts + 1),
            "state": case((reopened, EventState.RECEIVED.value), else_=events.state),
            "in_flight_since": now,
            "updated_at": now,
            "enqueued_at": func.coalesce(events.enqueued_at, now),
        },
        where=same_tenant,
    ).returning(events.tenant_hint, events.crashes, events.received_at)


def end_attempt(session: Session, job_id: str) -> None:
    """The attempt ended cleanly (done, failed, or a retry is scheduled)."""
    session.execute(
        update(JobEvent).where(JobEvent.openai_job_id == job_id).values(in_flight_since=None)
    )


def finish_event(session: Session, job_id: str, state: EventState, outcome: str) -> None:
    """End the event as done or failed, with what happened. Idempotent. Done stays done: a late
    duplicate's failure does not mark work that was committed as failed."""
    # The outcome may quote an external error (a driver's, an HTTP library's): masked.
    params = {"job_id": job_id, "state": state, "outcome": mask(outcome)[:2000], "now": clock.now()}
    rows.execute(session, _FINISH_FAILED if state == EventState.FAILED else _FINISH, params)


def _finish_statement(*, unless_done: bool) -> Any:
    events = JobEvent.__table__.c
    condition = [events.openai_job_id == bindparam("job_id")]
    if unless_done:
        condition.append(events.state != EventState.DONE)
    return (
        update(cast(Table, JobEvent.__table__))
        .where(*condition)
        .values(
            state=bindparam("state"),
            outcome=bindparam("outcome"),
            updated_at=bindparam("now", type_=UTCDateTime()),
            in_flight_since=None,
        )
    )


# Built once (building costs more than running); a failure never overwrites done.
_FINISH = _finish_statement(unless_done=False)
_FINISH_FAILED = _finish_statement(unless_done=True)


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(
        update(JobEvent)
        .where(JobEvent.openai_job_id == job_id, JobEvent.enqueued_at.is_(None))
        .values(enqueued_at=clock.now())
    )


def unenqueued_events(
    session: Session, older_than: timedelta, now: datetime | None = None
) -> list[str]:
    """Job ids accepted but never handed to the broker (a crash between commit and send)."""
    cutoff = (now or clock.now()) - older_than
    return list(
        session.scalars(
            select(JobEvent.openai_job_id)
            .where(
                JobEvent.state == EventState.RECEIVED,
                JobEvent.enqueued_at.is_(None),
                JobEvent.received_at < cutoff,
            )
            .limit(1000)
        )
    )


def stalled_events(
    session: Session, older_than: timedelta, now: datetime | None = None
) -> list[str]:
    """Job ids handed to the broker but untouched (no attempt started) for `older_than`, marked
    touched now so that each is returned once per period.

    A live event is attempted again within a task time limit plus a retry countdown; the caller
    passes a period longer than both (and than the broker's redelivery). An event untouched
    longer lost its message: Redis loses one that a worker killed with SIGKILL had popped but not
    yet recorded as unacknowledged, and Celery acknowledges a task killed by its hard time limit.
    Re-sending is safe: the task is idempotent.
    """
    now = now or clock.now()
    stalled = list(
        session.scalars(
            select(JobEvent.openai_job_id)
            .where(
                JobEvent.state == EventState.RECEIVED,
                JobEvent.enqueued_at.is_not(None),
                JobEvent.updated_at < now - older_than,
            )
            .limit(1000)
        )
    )
    if stalled:
        session.execute(
            update(JobEvent).where(JobEvent.openai_job_id.in_(stalled)).values(updated_at=now)
        )
    return stalled


@dataclass(frozen=True)
class Reconciled:
    unsent: list[str]
    stalled: list[str]


def reconcile(
    session: Session,
    *,
    grace: timedelta,
    stalled_after: timedelta,
    now: datetime | None = None,
) -> Reconciled:
    """Send again, after the commit, the events accepted but never handed to the broker (older
    than `grace`: a crash or a failed send between commit and send) and those whose message the
    broker lost (untouched for `stalled_after`, see `stalled_events`). Safe to repeat: the task
    is idempotent."""
    unsent = unenqueued_events(session, older_than=grace, now=now)
    stalled = stalled_events(session, older_than=stalled_after, now=now)
    for job_id in unsent:
        _send(session, job_id)
    for job_id in stalled:
        messages.send_after_commit(session, messages.JOB_FINISHED, (job_id,))
    return Reconciled(unsent, stalled)
