"""An outcome flood with overflowing counts from one tenant while another tenant's outcomes keep
landing, through the real recording path (`ftdeploy.record_outcomes` on real workers).

The flooding tenant's bucket already holds a count near 2**63 (a long flood of huge counts);
its new records for that bucket would overflow the 64-bit counters when summed, and some carry
counts near 2**63 themselves. Each such record is refused on its own, with a counted reason;
the same batches' other records, and the other tenant's batches, are kept exactly.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from registry import clock
from registry.canary.outcomes import bucket_start
from registry.db import unit_of_work
from registry.models import ModelVersion, OutcomeBatch, OutcomeCounter, Tenant
from tests.factories import deploy_new, make_tenant
from tests.faults.conftest import FaultStack

pytestmark = pytest.mark.faults

NEAR_LIMIT = 2**63 - 100  # what the flooding tenant's bucket already holds
FLOOD_BATCHES, STEADY_BATCHES = 20, 40
BUCKET_SECONDS = 10


def _tenant(stack: FaultStack, slug: str) -> None:
    with unit_of_work(stack.database_url) as session:
        deploy_new(session, make_tenant(session, slug, require_evaluation=False))


def _seed_near_limit(stack: FaultStack, slug: str, at: datetime) -> None:
    with unit_of_work(stack.database_url) as session:
        tenant_id, version_id = session.execute(
            select(Tenant.id, ModelVersion.id)
            .join(ModelVersion, ModelVersion.tenant_id == Tenant.id)
            .where(Tenant.slug == slug)
        ).one()
        session.add(
            OutcomeCounter(
                tenant_id=tenant_id,
                version_id=version_id,
                bucket_start=at,
                requests=NEAR_LIMIT,
                successes=NEAR_LIMIT,
            )
        )


def _requests(stack: FaultStack, slug: str) -> dict[datetime, int]:
    with unit_of_work(stack.database_url) as session:
        rows = session.execute(
            select(OutcomeCounter.bucket_start, OutcomeCounter.requests)
            .join(Tenant, Tenant.id == OutcomeCounter.tenant_id)
            .where(Tenant.slug == slug)
        )
        return {b: r for b, r in rows}


def _batches(stack: FaultStack) -> dict[tuple[str, str], tuple[int, int]]:
    with unit_of_work(stack.database_url) as session:
        rows = session.execute(
            select(
                Tenant.slug, OutcomeBatch.batch_id, OutcomeBatch.recorded, OutcomeBatch.refused
            ).join(Tenant, Tenant.id == OutcomeBatch.tenant_id)
        )
        return {(slug, batch): (recorded, refused) for slug, batch, recorded, refused in rows}


def test_overflowing_flood_from_one_tenant_while_another_keeps_landing(stack: FaultStack) -> None:
    _tenant(stack, "flood")
    _tenant(stack, "steady")
    now = clock.now()
    full = bucket_start(now - timedelta(minutes=5), BUCKET_SECONDS)
    other = bucket_start(now - timedelta(minutes=3), BUCKET_SECONDS)
    _seed_near_limit(stack, "flood", full)

    def flood(n: int) -> list[dict[str, Any]]:
        return [
            # Summed into the full bucket it overflows: refused by the database, on its own.
            {"tenant": "flood", "model": 1, "success": True, "count": 1000, "at": full.isoformat()},
            # A count near 2**63 itself: refused before it reaches a counter.
            {"tenant": "flood", "model": 1, "success": False, "count": 2**63 - 1 - n},
            {"tenant": "flood", "model": 1, "success": True, "count": 7, "at": other.isoformat()},
            {"tenant": "steady", "model": 1, "success": True, "count": 3, "latency_ms": 12.5},
        ]

    steady = [{"tenant": "steady", "model": "v1", "success": True, "count": 5}]
    from worker.app import app

    stack.worker("w1", concurrency=2)
    stack.worker("w2", concurrency=1)
    sent: list[str] = []
    for n in range(FLOOD_BATCHES):
        app.send_task("ftdeploy.record_outcomes", args=(flood(n),), kwargs={"batch_id": f"f{n}"})
        sent.append(f"f{n}")
        for m in (2 * n, 2 * n + 1):
            app.send_task("ftdeploy.record_outcomes", args=(steady,), kwargs={"batch_id": f"s{m}"})
            sent.append(f"s{m}")

    def all_stored() -> dict[tuple[str, str], tuple[int, int]] | None:
        batches = _batches(stack)
        return batches if {batch for _, batch in batches} == set(sent) else None

    stored = stack.wait(all_stored, 60, "every batch to be stored")
    # The steady tenant's counts are exact: nothing lost, nothing doubled.
    expected_steady = FLOOD_BATCHES * 3 + STEADY_BATCHES * 5
    assert sum(_requests(stack, "steady").values()) == expected_steady
    # The flooding tenant: its full bucket untouched, its other records all kept.
    assert _requests(stack, "flood") == {full: NEAR_LIMIT, other: FLOOD_BATCHES * 7}
    # Each flood batch counted its two refusals and its ten kept outcomes, for both tenants.
    for n in range(FLOOD_BATCHES):
        assert stored[("flood", f"f{n}")] == (10, 2), (n, stored[("flood", f"f{n}")])
        assert stored[("steady", f"f{n}")] == (10, 2)
    for m in range(STEADY_BATCHES):
        assert stored[("steady", f"s{m}")] == (5, 0)
    with unit_of_work(stack.database_url) as session:
        latencies = session.scalar(
            select(func.sum(OutcomeCounter.latency_count))
            .join(Tenant, Tenant.id == OutcomeCounter.tenant_id)
            .where(Tenant.slug == "steady")
        )
    assert latencies == FLOOD_BATCHES * 3

    log = "\n".join(w.log_path.read_text(errors="replace") for w in stack.workers)
    refusals = [line for line in log.splitlines() if "outcomes.refused" in line]
    assert len(refusals) == FLOOD_BATCHES, refusals[:3]
    assert all("count=2" in line and "would overflow" in line for line in refusals), refusals[:3]
    # Refused per record, not retried or failed as a batch.
    assert "outcomes.retry" not in log and "raised unexpected" not in log
    stack.check()
