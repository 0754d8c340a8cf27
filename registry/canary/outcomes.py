"""Online outcomes from the serving app, summed into per-version, per-time-bucket counters: a
batch stored in the caller's transaction (`store_outcomes`), and the guarantees every door of
outcomes keeps.

An outcome says how one request (or `count` alike requests) went: the tenant, the model id or the
version that served it, success, and optionally a score in 0..1 and a latency in milliseconds.
No outcome gets a row of its own: outcomes are summed per (version, bucket) and upserted
(`registry.canary.counters`).

Three doors record outcomes: the in-process `registry.canary.recorder.OutcomeRecorder`
(aggregates in memory, flushes in the background, on size or on `flush()`), and the Celery task
`ftdeploy.record_outcomes` and the `ftdeploy outcome` command, which both call `store_outcomes`
inside their unit of work. Where the pieces live:

- `registry.canary.outcome_input`: an `Outcome` and the checks of its fields, `Refusal`;
- `registry.canary.resolver`: `VersionResolver`, which version an outcome is for;
- `registry.canary.counters`: bucketing, `Sums` and the upsert;
- `registry.canary.counter_writes`: writes that one refused row does not block.

Guarantees:
- A malformed outcome (or an unknown tenant or model) is refused with the reason, naming the
  field; nothing of it is kept. Refusals are counted by field.
- An outcome is bucketed by when it happened (`at`, default: when it was recorded), never by when
  it was flushed, so a late flush cannot move it into a canary's window.
- An outcome for a version that is not live (staging, deprecated, archived, or one a stale
  routing snapshot still picked) is kept on its version's counters like any other. It does not
  count toward a canary: the analysis reads only production versions' buckets that begin at or
  after the canary's current step began (`registry.canary.canaries`), and the step begins when the
  version's traffic last changed, after any outcome it got while it was not live.
- The recorder keeps counts whose flush failed and writes them with the next flush: at least
  once. A flush whose commit succeeded but whose acknowledgement was lost is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from registry import clock
from registry.canary.counter_writes import MAX_COUNTER, store_isolated
from registry.canary.counters import Key, Sums, bucket_start
from registry.canary.outcome_input import Outcome, Refusal, field_of, parse_outcome
from registry.canary.resolver import VersionResolver
from registry.errors import FtdeployError


@dataclass
class StoreResult:
    recorded: int = 0  # outcomes stored (sum of counts)
    refused: list[Refusal] = field(default_factory=list)


def store_outcomes(
    session: Session,
    records: Iterable[object],
    *,
    bucket_seconds: int,
    resolver: VersionResolver | None = None,
    now: datetime | None = None,
) -> StoreResult:
    """Validate, resolve and store a batch in the caller's transaction (the task's and the CLI's
    path). Each refused record is listed with its index and reason; the rest are stored: a
    record whose count would overflow its bucket's counter, or whose version was deleted
    meanwhile, is refused on its own (`registry.canary.counter_writes.store_isolated`) and the other
    records of the batch, of every tenant, are kept."""
    now = now or clock.now()
    resolver = resolver or VersionResolver()
    result = StoreResult()
    pending: dict[Key, Sums] = {}
    members: dict[Key, list[tuple[int, int]]] = {}  # the (index, count) of each row's records
    for index, record in enumerate(records):
        try:
            outcome = record if isinstance(record, Outcome) else parse_outcome(record, now=now)
            tenant_id, version_id = resolver.resolve(session, outcome.tenant, outcome.model)
        except FtdeployError as error:
            result.refused.append(Refusal(index, field_of(error), str(error)))
            continue
        key = (tenant_id, version_id, bucket_start(outcome.at or now, bucket_seconds))
        sums = pending.setdefault(key, Sums())
        if sums.requests > MAX_COUNTER - outcome.count:
            result.refused.append(Refusal(index, "count", "the count would overflow its bucket"))
            continue
        sums.add(outcome)
        members.setdefault(key, []).append((index, outcome.count))
        result.recorded += outcome.count
    for key, (field_name, reason) in store_isolated(session, pending).items():
        for index, count in members.get(key, ()):
            result.refused.append(Refusal(index, field_name, reason))
            result.recorded -= count
    if pending:
        session.flush()
    result.refused.sort(key=lambda refusal: refusal.index)
    return result
