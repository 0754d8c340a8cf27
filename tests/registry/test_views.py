"""The dashboard's page data (registry.views): what the fleet and a tenant's page show, what they
hide from a scoped key, the canary explainer's words, previews that change nothing, and the
number of statements per page, which must not grow with tenants or audit events."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from registry import operations, records, versions
from registry.canary.canaries import assess, read_live_canaries
from registry.jobs import events
from registry.models import Deployment, DeploymentPolicy, ModelVersion, Tenant, TrafficEvent
from registry.tenants import PolicyChanges, set_policy
from registry.views import fleet, preview, tenant
from registry.views.splits import shares, text
from tests.factories import deploy_new, make_tenant
from tests.registry.canary_support import T0, Clock, canary_tenant, record, simulated_clock
from tests.statements import recorded_statements


@contextmanager
def counted(session: Session) -> Iterator[list[str]]:
    """The statements sent while the block runs, but SQLite's BEGIN (filled in at its end)."""
    statements: list[str] = []
    with recorded_statements(session.get_bind()) as seen:
        yield statements
    statements += [s for s, _ in seen if not s.lstrip().upper().startswith("BEGIN")]


@pytest.fixture
def clock() -> Iterator[Clock]:
    with simulated_clock() as fake:
        yield fake


def _tenant(session: Session, slug: str) -> Tenant:
    return session.scalars(select(Tenant).where(Tenant.slug == slug)).one()


def test_fleet_rows_splits_and_attention(sessions: sessionmaker[Session], clock: Clock) -> None:
    canary_id, canary_slug = canary_tenant(sessions, "cana")
    with sessions() as session, session.begin():
        calm = make_tenant(session, "calm", require_evaluation=False)
        deploy_new(session, calm, recommendation=None)
        green = make_tenant(session, "green", require_evaluation=False)
        deploy_new(session, green, recommendation=None)
        set_policy(session, green.id, PolicyChanges(strategy="blue_green"))
        deploy_new(session, green, recommendation=None)  # v2 staged
        waiting = make_tenant(session, "waits")
        deploy_new(session, waiting, recommendation=None)  # awaiting evaluation
        events.accept_event(session, "ftjob-failed-1", "calm", "cli")
        operations.queue_operation(session, "calm", "rollback", actor="key:ops")
    with sessions() as session, session.begin():
        events.finish_event(session, "ftjob-failed-1", "failed", "the job failed at OpenAI")
    clock.advance(5)
    with sessions() as session:
        data = fleet.fleet(session, None, clock.now)
    rows = {row.tenant: row for row in data.rows}
    assert list(rows) == ["calm", "cana", "green", "waits"]
    assert text(rows["cana"].split) == "v1 90% · v2 10%"
    assert [s.role for s in rows["cana"].split] == ["stable", "canary"]
    panel = rows["cana"].canary
    assert panel is not None and panel.step_number == 1 and panel.steps == (10, 25, 50, 100)
    assert panel.waiting_for_data and panel.state == "holding for data"
    assert rows["cana"].attention == ["canary v2 is holding for data"]
    assert rows["green"].staged == [2]
    assert rows["green"].attention == ["v2 is staged, waiting for its switch"]
    assert rows["waits"].attention == ["1 deployment awaiting evaluation"]
    assert rows["calm"].attention == [
        "1 failed job event in the last day",
        "1 operation queued or running",
    ]
    assert {r.tenant for r in data.attention} == {"calm", "cana", "green", "waits"}
    with sessions() as session:
        scoped = fleet.fleet(session, {canary_id}, clock.now)
    assert [row.tenant for row in scoped.rows] == [canary_slug]


def test_the_explainer_uses_the_sweeps_words(sessions: sessionmaker[Session], clock: Clock) -> None:
    tenant_id, slug = canary_tenant(sessions, "explained")
    record(sessions, slug, 2, ok=40, failed=2, at=T0 + timedelta(seconds=10))
    record(sessions, slug, 1, ok=300, failed=3, at=T0 + timedelta(seconds=10))
    clock.advance(30)
    with sessions() as session:
        page = tenant.tenant_page(session, _tenant(session, slug), clock.now)
        (assessment,) = assess(read_live_canaries(session, tenant_id), clock.now)
    panel = page.canary
    assert panel is not None
    row = records.canary_status(assessment, clock.now)
    assert panel.reason == row["reason"] and panel.action == row["next"] == "hold"
    assert panel.canary.requests == 42 and panel.stable.requests == 303
    assert panel.samples == 42 and panel.min_samples == 50 and panel.threshold == 0.9
    assert panel.evidence is not None and panel.evidence.compared
    assert panel.evidence.lower < 40 / 42 < panel.evidence.upper
    assert panel.bake_left_seconds == pytest.approx(30)
    assert panel.deadline_at == T0 + timedelta(seconds=600)
    assert [v.version for v in page.versions] == [2, 1]
    assert text(page.split) == "v1 90% · v2 10%"
    assert [c.action for c in page.changes][-1] == "deploy"
    assert page.chart[-1].end == clock.now and text(page.chart[-1].split) == "v1 90% · v2 10%"
    assert ("steps", "10% → 25% → 50% → 100%") in page.policy


def test_a_stored_policy_that_cannot_be_used_is_shown_not_decided(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    """Steps are read as stored (JSON): a list that is not of whole numbers refuses the policy,
    with the same sentence whichever canary of the fleet shares it."""
    canary_tenant(sessions, "odd")
    canary_tenant(sessions, "odder")
    with sessions() as session, session.begin():
        session.execute(update(DeploymentPolicy).values(canary_steps=[10, True, 100]))
    with sessions() as session:
        assessed = assess(read_live_canaries(session), clock.now)
        rows = {row.tenant: row for row in fleet.fleet(session, None, clock.now).rows}
    assert [a.action for a in assessed] == ["error", "error"]
    assert {a.reason for a in assessed} == {
        "the tenant's policy cannot be used: invalid steps: [10, True, 100] is not a list of whole"
        " numbers"
    }
    assert rows["odd"].attention == ["canary v2 cannot be decided"]


def test_preview_is_the_registrys_change_and_changes_nothing(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    tenant_id, _ = canary_tenant(sessions, "previewed")
    with sessions() as session:
        before = versions.current_split(session, tenant_id)
        try:
            promoted = preview.preview(session, tenant_id, "promote", 2, 25)
            rolled = preview.preview(session, tenant_id, "rollback")
            missing = preview.preview(session, tenant_id, "promote", 9, 50)
        finally:
            session.rollback()
    assert text(promoted.before) == "v1 90% · v2 10%"
    assert promoted.after == shares({1: 75, 2: 25}) and promoted.error is None
    assert rolled.after == shares({1: 100})
    assert missing.after is None and missing.error and "version 9" in missing.error
    with sessions() as session:
        assert versions.current_split(session, tenant_id) == before
        trail = session.scalars(select(TrafficEvent).where(TrafficEvent.tenant_id == tenant_id))
        assert all(e.actor != "preview" for e in trail)


def _many_tenants(session: Session, n: int, prefix: str) -> None:
    for i in range(n):
        t = make_tenant(session, f"{prefix}-{i}", strategy="canary", require_evaluation=False)
        deploy_new(session, t, recommendation=None)
        deploy_new(session, t, recommendation=None)


def test_statements_per_page_do_not_grow(sessions: sessionmaker[Session], clock: Clock) -> None:
    with sessions() as session, session.begin():
        _many_tenants(session, 2, "few")
    with sessions() as session, counted(session) as few:
        fleet.fleet(session, None, clock.now)
    with sessions() as session, session.begin():
        _many_tenants(session, 20, "many")
    with sessions() as session, counted(session) as many:
        assert len(fleet.fleet(session, None, clock.now).rows) == 22
    assert len(few) == len(many) <= 7

    def page_statements(slug: str) -> int:
        with sessions() as session:
            found = _tenant(session, slug)
            with counted(session) as statements:
                tenant.tenant_page(session, found, clock.now)
            return len(statements)

    short = page_statements("few-0")
    with sessions() as session, session.begin():
        for i in range(tenant.CHART_CHANGES + 20):
            versions.promote(session, "few-0", 1 + i % 2, 50, actor="test")
    long = page_statements("few-0")
    assert long == short
    assert long <= 12
    with sessions() as session:
        page = tenant.tenant_page(session, _tenant(session, "few-0"), clock.now)
    assert len(page.chart) == tenant.CHART_CHANGES and len(page.changes) == tenant.HISTORY_ROWS
    assert page.total_changes == tenant.CHART_CHANGES + 22


def test_a_tenant_with_two_live_canaries_is_one_fleet_row_showing_the_newest(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    """The fleet reads each tenant with its live canary: two of them (a state the registry
    avoids, but rows can hold) still make one row, with the newest canary."""
    tenant_id, slug = canary_tenant(sessions, "twice")
    with sessions() as session, session.begin():
        deploy_new(session, session.get_one(Tenant, tenant_id))  # v3
        v2 = session.scalars(
            select(ModelVersion).where(
                ModelVersion.tenant_id == tenant_id, ModelVersion.version == 2
            )
        ).one()
        v2.status, v2.traffic_percent = "production", 5
        session.execute(
            update(Deployment)
            .where(Deployment.version_id == v2.id)
            .values(status="active", auto_promote=True, step_started_at=clock.now)
        )
    with sessions() as session:
        live = read_live_canaries(session, tenant_id)
        rows = fleet.fleet(session, None, clock.now).rows
    assert [c.version for c in live] == [2, 3]
    assert [row.tenant for row in rows] == [slug]
    assert rows[0].canary is not None and rows[0].canary.version == 3
