"""Writing outcome counters so that one row the database refuses never blocks the others.

A row is refused for good when a counter would overflow (64-bit since migration 0003, so only a
flood of huge counts into one bucket gets there) or when its version or tenant was deleted after
it was resolved. Such a row is left out, with its reason; every other row is written.

- `store_isolated(session, sums)`: in the caller's transaction (the task's and the CLI's unit of
  work). One upsert for all rows; if the database refuses it, one savepoint per row.
- `write_by_tenant(sessions, batch)`: the recorder's flush. One transaction for everything; if
  that fails, one transaction per tenant, so a tenant whose rows fail (refused, or a lock that
  times out) does not keep the other tenants' outcomes from landing. Settled rows (written or
  refused for good) are removed from `batch` as they are settled, so after an exception what is
  left in it is exactly what must be retried.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from registry.canary.counters import Key, Sums, upsert_counters
from registry.db import unit_of_work
from registry.masking import mask

# Refused for good: retrying the same row can only fail again.
PERMANENT = (DataError, IntegrityError)
MAX_COUNTER = 2**63 - 1  # BIGINT


Refused = tuple[str, str]  # (field counted under, reason)


def refusal_reason(error: BaseException) -> Refused:
    """Why the database refused a row: the field it is counted under and one bounded line
    without secrets."""
    if isinstance(error, IntegrityError):
        return "model", "its version or tenant no longer exists"
    detail = str(getattr(error, "orig", error)).strip().splitlines()
    first = mask(detail[0])[:200] if detail else type(error).__name__
    return "count", f"a counter of its bucket would overflow ({first})"


def _ordered(sums: Mapping[Key, Sums]) -> list[tuple[Key, Sums]]:
    return sorted(sums.items(), key=lambda item: (item[0][1], item[0][2]))


def store_isolated(session: Session, sums: Mapping[Key, Sums]) -> dict[Key, Refused]:
    """Upsert `sums` in the caller's transaction; returns the rows refused for good, with their
    reasons (nothing of those is written). Other database errors propagate. Flushes only."""
    if not sums:
        return {}
    try:
        with session.begin_nested():
            upsert_counters(session, sums)
        return {}
    except PERMANENT:
        pass
    refused: dict[Key, Refused] = {}
    for key, row in _ordered(sums):
        try:
            with session.begin_nested():
                upsert_counters(session, {key: row})
        except PERMANENT as error:
            refused[key] = refusal_reason(error)
    return refused


@dataclass
class WriteReport:
    written: int = 0  # rows upserted
    refused: dict[Key, Refused] = field(default_factory=dict)  # rows refused for good
    failed_tenants: list[uuid.UUID] = field(default_factory=list)  # to retry with the next flush
    error: Exception | None = None  # the first error that was not a refusal


def _disconnected(error: BaseException) -> bool:
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def write_by_tenant(
    sessions: sessionmaker[Session], batch: MutableMapping[Key, Sums]
) -> WriteReport:
    """Write `batch` (see the module docstring). Never raises: the first error that was not a
    refusal is in the report (after every tenant had its chance, or at once when the connection
    was lost), and the rows of the tenants that failed are the ones left in `batch`."""
    report = WriteReport()
    if not batch:
        return report
    try:
        with unit_of_work(sessions) as session:
            upsert_counters(session, batch)
    except Exception as error:
        if _disconnected(error):
            report.error = error
            return report
    else:
        report.written = len(batch)
        batch.clear()
        return report
    tenants: dict[uuid.UUID, dict[Key, Sums]] = {}
    for key, row in batch.items():
        tenants.setdefault(key[0], {})[key] = row
    for tenant_id, rows in tenants.items():
        try:
            with unit_of_work(sessions) as session:
                refused = store_isolated(session, rows)
        except Exception as error:
            report.failed_tenants.append(tenant_id)
            report.error = report.error or error
            if _disconnected(error):
                break
            continue
        report.refused.update(refused)
        report.written += len(rows) - len(refused)
        for key in rows:
            del batch[key]
    return report
