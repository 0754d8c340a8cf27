"""The registry reads one clock: setting it moves every timestamp the registry writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from registry import clock
from registry.models import Deployment, ModelVersion, TrafficEvent
from tests.factories import deploy_new, make_tenant

THEN = datetime(2031, 3, 4, 5, 6, 7, tzinfo=UTC)


def test_use_sets_and_restores_the_source() -> None:
    before = clock.now()
    with clock.use(lambda: THEN):
        assert clock.now() == THEN
    assert abs(clock.now() - before) < timedelta(minutes=1)


def test_rows_and_changes_are_stamped_by_the_clock(session: Session) -> None:
    with clock.use(lambda: THEN):
        tenant = make_tenant(session)
        deploy_new(session, tenant)
        session.flush()
        stamps = {
            tenant.created_at,
            *(v.created_at for v in session.query(ModelVersion)),
            *(v.deployed_at for v in session.query(ModelVersion)),
            *(d.created_at for d in session.query(Deployment)),
            *(e.created_at for e in session.query(TrafficEvent)),
        }
    assert stamps == {THEN}
