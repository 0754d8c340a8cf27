"""Helpers for the canary tests: a settable clock, a tenant with a live canary, outcomes, reads."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from registry import clock as registry_clock
from registry import versions
from registry.canary.outcome_input import Outcome
from registry.canary.outcomes import store_outcomes
from registry.canary.sweep import SweepReport
from registry.models import Deployment, ModelVersion, TrafficEvent
from tests.factories import deploy_new, make_tenant
from worker.sweep import run_sweep

# On a bucket boundary, so outcomes recorded at a step's start fall inside its window.
T0 = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
BUCKET = 10
POLICY: dict[str, Any] = dict(
    strategy="canary",
    canary_steps=(10, 25, 50, 100),
    auto_promote=True,
    auto_promote_threshold=0.9,
    min_samples=50,
    bake_seconds=60,
    progress_deadline_seconds=600,
)


def auto_promote_sweep(sessions: sessionmaker[Session], now: Any) -> SweepReport:
    """The worker's sweep (its door opens the units of work) on the test's database."""
    return run_sweep(now, database=sessions)


class Clock:
    """The time the registry sees: `now` for the sweep, and the steps' start when it acts."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@contextmanager
def simulated_clock(start: datetime = T0) -> Iterator[Clock]:
    """The registry's one clock (`registry.clock`) reads a settable `Clock` inside the block."""
    fake = Clock(start)
    with registry_clock.use(fake):
        yield fake


def canary_tenant(
    sessions: sessionmaker[Session], slug: str | None = None, **policy: Any
) -> tuple[uuid.UUID, str]:
    """A tenant whose v1 serves and whose v2 is a live canary at its first step (10%)."""
    with sessions() as session, session.begin():
        tenant = make_tenant(session, slug, **(POLICY | policy))
        deploy_new(session, tenant)
        deploy_new(session, tenant)
        return tenant.id, tenant.slug


def record(
    sessions: sessionmaker[Session],
    tenant: str,
    version: int,
    ok: int,
    failed: int,
    at: datetime,
) -> None:
    batch = [
        Outcome(tenant, version, success, count=n, at=at)
        for success, n in ((True, ok), (False, failed))
        if n
    ]
    with sessions() as session, session.begin():
        result = store_outcomes(session, batch, bucket_seconds=BUCKET, now=at)
    assert not result.refused


def split(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> dict[int, int]:
    with sessions() as session:
        return versions.current_split(session, tenant_id)


def trail(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> list[TrafficEvent]:
    """The tenant's audit events, oldest first."""
    with sessions() as session:
        return list(
            session.scalars(
                select(TrafficEvent)
                .where(TrafficEvent.tenant_id == tenant_id)
                .order_by(TrafficEvent.id)
            )
        )


def deployment_of(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, version: int
) -> Deployment:
    with sessions() as session:
        return session.scalars(
            select(Deployment)
            .join(ModelVersion, ModelVersion.id == Deployment.version_id)
            .where(ModelVersion.tenant_id == tenant_id, ModelVersion.version == version)
        ).one()


def statuses(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> dict[int, str]:
    with sessions() as session:
        rows = session.execute(
            select(ModelVersion.version, ModelVersion.status).where(
                ModelVersion.tenant_id == tenant_id
            )
        )
        return {version: status for version, status in rows}
