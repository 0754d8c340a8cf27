"""Outcome batches that count once: the HTTP API's `POST …/outcomes` and the Celery task
`ftdeploy.record_outcomes` both send a batch id with their records.

Guarantees: a batch is counted at most once per tenant. Its id is claimed, one row per tenant it
names (`ai_outcome_batches`, unique per tenant and batch id), in the same transaction as the
counters it adds to, so a batch redelivered after its commit (a retried request, a redelivered
message) finds its rows and adds nothing; one redelivered while the first is still being written
waits on the unique index, then finds them. Refused records are reported as `store_outcomes`
reports them; they are not retried by a redelivery.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from registry import clock
from registry.canary.outcome_input import Outcome, Refusal, parse_outcome
from registry.canary.outcomes import store_outcomes
from registry.canary.resolver import VersionResolver
from registry.errors import FtdeployError, InvalidInput
from registry.models import OutcomeBatch

MAX_BATCH_ID = 200


@dataclass
class BatchResult:
    batch_id: str
    duplicate: bool = False
    recorded: int = 0  # outcomes counted by this batch (sum of counts), the first time
    refused: list[Refusal] = field(default_factory=list)
    refused_count: int = 0


def check_batch_id(batch_id: object) -> str:
    """A batch id from outside: 1..200 characters, no NUL (the database cannot store one)."""
    if not isinstance(batch_id, str) or not 1 <= len(batch_id) <= MAX_BATCH_ID:
        raise InvalidInput("batch_id", f"{str(batch_id)[:40]!r} is not 1-200 characters")
    if "\x00" in batch_id:
        raise InvalidInput("batch_id", "contains a NUL character")
    return batch_id


def store_batch(
    session: Session,
    batch_id: str,
    records: Sequence[object],
    *,
    bucket_seconds: int,
    resolver: VersionResolver | None = None,
    tenant_id: uuid.UUID | None = None,
    now: datetime | None = None,
) -> BatchResult:
    """Count `records` once under `batch_id`, in the caller's transaction (flushes only).

    Each record names its tenant (as `store_outcomes` reads it); `tenant_id`, when given, is
    claimed even if every record is refused. A batch id already claimed for any of the tenants
    makes the whole batch a duplicate: nothing is added and the first delivery's counts are
    returned. Raises InvalidInput for a bad batch id.
    """
    batch_id = check_batch_id(batch_id)
    now = now or clock.now()
    resolver = resolver or VersionResolver()
    tenants = {tenant_id} if tenant_id is not None else set()
    for record in records:
        try:
            outcome = record if isinstance(record, Outcome) else parse_outcome(record, now=now)
            tenants.add(resolver.resolve(session, outcome.tenant, outcome.model)[0])
        except FtdeployError:
            continue  # refused below, with its reason
    claimed = _claim(session, batch_id, sorted(tenants))
    if not claimed:
        return _first_delivery(session, batch_id, sorted(tenants))
    stored = store_outcomes(
        session, records, bucket_seconds=bucket_seconds, resolver=resolver, now=now
    )
    if tenants:
        session.execute(
            update(OutcomeBatch)
            .where(OutcomeBatch.batch_id == batch_id, OutcomeBatch.tenant_id.in_(tenants))
            .values(recorded=stored.recorded, refused=len(stored.refused))
        )
        session.flush()
    return BatchResult(
        batch_id, False, stored.recorded, stored.refused, refused_count=len(stored.refused)
    )


def _claim(session: Session, batch_id: str, tenant_ids: list[uuid.UUID]) -> bool:
    """Insert the batch's rows; False (and nothing kept) when any tenant already has it."""
    if not tenant_ids:
        return True
    table = cast(Table, OutcomeBatch.__table__)
    insert: Any = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    with session.begin_nested() as savepoint:
        for tenant in tenant_ids:  # in id order: concurrent claimers lock in the same order
            inserted = session.execute(
                insert(table)
                .values(
                    tenant_id=tenant,
                    batch_id=batch_id,
                    recorded=0,
                    refused=0,
                    received_at=clock.now(),
                )
                .on_conflict_do_nothing(index_elements=["tenant_id", "batch_id"])
                .returning(table.c.id)
            ).first()
            if inserted is None:
                savepoint.rollback()
                return False
    return True


def _first_delivery(session: Session, batch_id: str, tenant_ids: list[uuid.UUID]) -> BatchResult:
    row = session.scalars(
        select(OutcomeBatch)
        .where(OutcomeBatch.batch_id == batch_id, OutcomeBatch.tenant_id.in_(tenant_ids))
        .order_by(OutcomeBatch.id)
        .limit(1)
    ).first()
    recorded, refused = (row.recorded, row.refused) if row is not None else (0, 0)
    return BatchResult(batch_id, True, recorded, [], refused_count=refused)
