"""The auto-promote sweep against real databases, with time driven through `now`.

The registry's one clock (`registry.clock`) is set to a settable one, so a step's start and the
sweep's `now` are on the same simulated timeline.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from registry import versions
from registry.canary import retention, sweep
from registry.canary.canaries import Assessment
from registry.db import session_factory, unit_of_work
from registry.errors import InvariantViolation, NothingToRollBack
from registry.models import DeploymentPolicy, OutcomeCounter, Tenant
from registry.tenants import PolicyChanges, pause_tenant, set_policy
from tests.factories import deploy_new, make_tenant
from tests.registry.canary_support import (
    POLICY,
    Clock,
    auto_promote_sweep,
    canary_tenant,
    deployment_of,
    record,
    simulated_clock,
    split,
    statuses,
    trail,
)
from tests.statements import recorded_statements
from worker.sweep import apply_one


def plan(sessions: sessionmaker[Session], now: Any) -> list[Assessment]:
    with unit_of_work(sessions) as session:
        return sweep.plan(session, now)


def apply(sessions: sessionmaker[Session], assessment: Assessment) -> sweep.SweepItem:
    return apply_one(assessment, database=sessions)


@pytest.fixture
def clock() -> Iterator[Clock]:
    with simulated_clock() as fake:
        yield fake


def test_good_canary_walks_10_25_50_100_and_ends_promoted(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    tenant_id, slug = canary_tenant(sessions)
    assert split(sessions, tenant_id) == {1: 90, 2: 10}
    for before, after in ((10, 25), (25, 50), (50, 100)):
        record(sessions, slug, 2, ok=60, failed=0, at=clock())
        record(sessions, slug, 1, ok=300, failed=3, at=clock())
        clock.advance(30)
        [held] = auto_promote_sweep(sessions, clock()).items
        # Only this step's outcomes count: 60, not the sum over the steps so far.
        assert held.action == "hold" and not held.applied
        assert "60 of 50 requests" in held.reason and "30 of 60 s" in held.reason
        clock.advance(40)
        [item] = auto_promote_sweep(sessions, clock()).items
        assert item.applied and item.traffic_percent == before
        assert item.action == ("promote" if after == 100 else "step")
        assert split(sessions, tenant_id)[2] == after
    assert split(sessions, tenant_id) == {2: 100}
    deployment = deployment_of(sessions, tenant_id, 2)
    assert deployment.status == "promoted"
    assert deployment.reason is not None and "promote 50% -> 100%" in deployment.reason
    events = trail(sessions, tenant_id)
    assert [(e.action, e.actor, e.version) for e in events[2:]] == [
        ("auto_step", "auto", 2),
        ("auto_step", "auto", 2),
        ("auto_promote", "auto", 2),
    ]
    assert events[-1].reason == deployment.reason
    assert statuses(sessions, tenant_id) == {1: "deprecated", 2: "production"}
    # Nothing is left to sweep.
    assert auto_promote_sweep(sessions, clock.advance(70)).canaries == 0


def test_bad_canary_rolls_back_to_the_previous_split(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    with sessions() as session, session.begin():
        tenant = make_tenant(session, strategy="canary", canary_percent=40)
        deploy_new(session, tenant)
        deploy_new(session, tenant)  # v2 at 40%, made without auto-promote: never swept
        set_policy(session, tenant.id, PolicyChanges(**{**POLICY, "canary_steps": (10, 100)}))
        deploy_new(session, tenant)  # v3, the canary
        tenant_id, slug = tenant.id, tenant.slug
    assert split(sessions, tenant_id) == {1: 54, 2: 36, 3: 10}
    record(sessions, slug, 3, ok=20, failed=40, at=clock())
    record(sessions, slug, 1, ok=400, failed=4, at=clock())
    report = auto_promote_sweep(sessions, clock.advance(10))
    # Clearly failing: rolled back at once, before the bake time is over.
    [item] = report.items
    assert (item.version, item.action, item.applied) == (3, "rollback", True)
    assert split(sessions, tenant_id) == {1: 60, 2: 40}
    deployment = deployment_of(sessions, tenant_id, 3)
    assert deployment.status == "rolled_back"
    assert deployment.reason == item.reason and "clearly failing" in item.reason
    last = trail(sessions, tenant_id)[-1]
    assert (last.action, last.actor, last.version) == ("auto_rollback", "auto", 3)
    assert last.split_before == {"1": 54, "2": 36, "3": 10}
    assert last.split_after == {"1": 60, "2": 40}
    assert deployment_of(sessions, tenant_id, 2).status == "active"


def test_no_traffic_holds_then_rolls_back_at_the_deadline(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    tenant_id, _ = canary_tenant(sessions)
    for seconds in (70, 300, 200):  # 70 s, 370 s, 570 s: past the bake, before the deadline
        [item] = auto_promote_sweep(sessions, clock.advance(seconds)).items
        assert item.action == "hold" and "waiting for data: 0 of 50 requests" in item.reason
    assert split(sessions, tenant_id) == {1: 90, 2: 10}
    [item] = auto_promote_sweep(sessions, clock.advance(30)).items
    assert item.action == "rollback" and item.applied
    assert "progress deadline of 600 s passed" in item.reason
    assert split(sessions, tenant_id) == {1: 100}
    assert deployment_of(sessions, tenant_id, 2).status == "rolled_back"


def test_failing_canary_holds_when_auto_rollback_is_off(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    tenant_id, slug = canary_tenant(sessions, auto_rollback=False)
    record(sessions, slug, 2, ok=10, failed=50, at=clock())
    [item] = auto_promote_sweep(sessions, clock.advance(70)).items
    assert item.action == "hold" and "auto-rollback is off" in item.reason
    assert split(sessions, tenant_id) == {1: 90, 2: 10}


def test_operator_rollback_between_read_and_apply_leaves_no_promotion(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    tenant_id, slug = canary_tenant(sessions)
    record(sessions, slug, 2, ok=100, failed=0, at=clock())
    [planned] = plan(sessions, clock.advance(70))
    assert planned.action == "step"
    with sessions() as session, session.begin():
        versions.rollback(session, tenant_id, actor="operator:alice")
    item = apply(sessions, planned)
    assert not item.applied and item.skipped == "the deployment is rolled_back now"
    assert split(sessions, tenant_id) == {1: 100}
    assert [e.action for e in trail(sessions, tenant_id)] == ["deploy", "deploy", "rollback"]
    assert deployment_of(sessions, tenant_id, 2).status == "rolled_back"


def test_operator_promotion_between_read_and_apply_is_not_overridden(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    tenant_id, slug = canary_tenant(sessions)
    record(sessions, slug, 2, ok=100, failed=0, at=clock())
    [planned] = plan(sessions, clock.advance(70))
    with sessions() as session, session.begin():
        versions.promote(session, tenant_id, 2, 30, actor="operator:bob")
    item = apply(sessions, planned)
    assert not item.applied and item.skipped == "v2 is production at 30% now, not at 10%"
    assert split(sessions, tenant_id) == {1: 70, 2: 30}


def test_pause_between_read_and_apply_holds_the_canary(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    tenant_id, slug = canary_tenant(sessions)
    record(sessions, slug, 2, ok=100, failed=0, at=clock())
    [planned] = plan(sessions, clock.advance(70))
    assert planned.action == "step"
    with sessions() as session, session.begin():
        pause_tenant(session, slug, actor="operator:carol", reason="incident 7")
    item = apply(sessions, planned)
    assert not item.applied
    assert item.skipped == "auto-promotion was paused since it was read (incident 7)"
    assert split(sessions, tenant_id) == {1: 90, 2: 10}


def test_rolling_back_an_older_canary_takes_only_it_out(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    tenant_id, slug = canary_tenant(sessions)
    with sessions() as session, session.begin():
        tenant = session.get_one(Tenant, tenant_id)
        deploy_new(session, tenant)  # v3: a second canary, newer than v2
    assert split(sessions, tenant_id) == {1: 81, 2: 9, 3: 10}
    record(sessions, slug, 2, ok=5, failed=60, at=clock())
    report = auto_promote_sweep(sessions, clock.advance(10))
    by_version = {item.version: item for item in report.items}
    assert by_version[2].action == "rollback" and by_version[2].applied
    assert by_version[3].action == "hold"
    assert split(sessions, tenant_id) == {1: 89, 3: 11}
    assert deployment_of(sessions, tenant_id, 2).status == "rolled_back"
    assert deployment_of(sessions, tenant_id, 3).status == "active"
    last = trail(sessions, tenant_id)[-1]
    assert (last.action, last.version, last.actor) == ("auto_rollback", 2, "auto")


def test_outcomes_from_before_the_step_do_not_count(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    with sessions() as session, session.begin():
        tenant = make_tenant(session, **{**POLICY, "strategy": "blue_green"})
        deploy_new(session, tenant)
        versions.promote(session, tenant.id, 1, 100)
        deploy_new(session, tenant)  # v2 staged at 0%: not live
        tenant_id, slug = tenant.id, tenant.slug
    # Outcomes of the staged version are kept on its counters ...
    record(sessions, slug, 2, ok=0, failed=80, at=clock())
    with sessions() as session:
        rows = session.scalars(select(OutcomeCounter)).all()
        assert [(r.requests, r.successes) for r in rows] == [(80, 0)]
    clock.advance(20)
    with sessions() as session, session.begin():
        versions.promote(session, tenant_id, 2, 10, actor="operator")
    # ... but they are from before its step began: they count for nothing.
    record(sessions, slug, 2, ok=60, failed=0, at=clock())
    [item] = auto_promote_sweep(sessions, clock.advance(70)).items
    assert item.action == "step" and item.applied, item.reason
    assert split(sessions, tenant_id) == {1: 75, 2: 25}


def test_an_unusable_policy_is_reported_and_the_others_still_move(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    broken_id, _ = canary_tenant(sessions, "broken")
    with sessions() as session, session.begin():
        # As a row written before validation, or by the host SaaS: deadline 600 < bake 900.
        session.execute(
            update(DeploymentPolicy)
            .where(DeploymentPolicy.tenant_id == broken_id)
            .values(bake_seconds=900)
        )
    good_id, good = canary_tenant(sessions, "good")
    record(sessions, good, 2, ok=80, failed=0, at=clock())
    report = auto_promote_sweep(sessions, clock.advance(70))
    by_tenant = {item.tenant: item for item in report.items}
    assert by_tenant["broken"].action == "error"
    assert "deadline_seconds" in by_tenant["broken"].reason
    assert by_tenant["good"].applied
    assert split(sessions, broken_id) == {1: 90, 2: 10}
    assert split(sessions, good_id) == {1: 75, 2: 25}


def test_retention_archives_beyond_keep_and_never_restores_archived(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    with sessions() as session, session.begin():
        tenant = make_tenant(session, keep_deprecated=1)
        for _ in range(4):
            deploy_new(session, tenant)
            clock.advance(1)
        tenant_id, slug = tenant.id, tenant.slug
    assert statuses(sessions, tenant_id) == {
        1: "deprecated",
        2: "deprecated",
        3: "deprecated",
        4: "production",
    }
    report = auto_promote_sweep(sessions, clock())
    assert report.archived == {slug: [1, 2]}
    archive = [e for e in trail(sessions, tenant_id) if e.action == "archive"]
    assert len(archive) == 1 and archive[0].actor == "auto" and "v1, v2" in archive[0].reason
    assert auto_promote_sweep(sessions, clock()).archived == {}  # idempotent
    with sessions() as session, session.begin():
        assert versions.rollback(session, tenant_id).after == {3: 100}
    with sessions() as session, session.begin(), pytest.raises(NothingToRollBack):
        versions.rollback(session, tenant_id)
    assert statuses(sessions, tenant_id)[1] == "archived"


def test_one_tenants_retention_failure_leaves_the_others_and_the_report_whole(
    sessions: sessionmaker[Session], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_ids = {}
    for slug in ("first", "second"):
        with sessions() as session, session.begin():
            tenant = make_tenant(session, slug, keep_deprecated=0)
            for _ in range(2):
                deploy_new(session, tenant)
            tenant_ids[slug] = tenant.id
    _, moving = canary_tenant(sessions, "moving")
    record(sessions, moving, 2, ok=80, failed=0, at=clock())
    real = retention.archive_beyond_retention

    def first_fails(session: Session, tenant_id: Any) -> list[int]:
        numbers = real(session, tenant_id)
        if tenant_id == tenant_ids["first"]:
            raise InvariantViolation("first", {})  # after writing: its unit of work rolls back
        return numbers

    monkeypatch.setattr(retention, "archive_beyond_retention", first_fails)
    report = auto_promote_sweep(sessions, clock.advance(70))
    assert [item.tenant for item in report.applied()] == ["moving"]
    assert report.archived == {"second": [1]}
    assert list(report.retention_errors) == ["first"]
    assert "InvariantViolation" in report.as_dict()["retention_errors"]["first"]
    assert statuses(sessions, tenant_ids["first"]) == {1: "deprecated", 2: "production"}
    assert statuses(sessions, tenant_ids["second"]) == {1: "archived", 2: "production"}


def _statements(sessions: sessionmaker[Session], run: Any) -> int:
    with recorded_statements(sessions.kw["bind"]) as seen:
        run()
    return len(seen)


def test_the_read_does_not_grow_with_the_number_of_canaries(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    canary_tenant(sessions, "first")
    one = _statements(sessions, lambda: plan(sessions, clock()))
    whole_one = _statements(sessions, lambda: auto_promote_sweep(sessions, clock()))
    for n in range(6):
        _, slug = canary_tenant(sessions, f"more-{n}")
        record(sessions, slug, 2, ok=10, failed=0, at=clock())
    assert len(plan(sessions, clock())) == 7
    assert _statements(sessions, lambda: plan(sessions, clock())) == one
    # All of them hold: the whole sweep is as many statements for 7 canaries as for 1.
    assert _statements(sessions, lambda: auto_promote_sweep(sessions, clock())) == whole_one


@pytest.mark.parametrize("barrier", [True, False])
def test_overlapping_sweeps_act_once(pg_url: str, clock: Clock, barrier: bool) -> None:
    sessions = session_factory(pg_url)
    tenants = [canary_tenant(sessions, f"t{n}") for n in range(8)]
    for _, slug in tenants:
        record(sessions, slug, 2, ok=80, failed=0, at=clock())
    now = clock.advance(70)
    threads = 4
    gate = threading.Barrier(threads)

    def one_sweep(_: int) -> list[sweep.SweepItem]:
        if not barrier:
            return auto_promote_sweep(sessions, now).items
        planned = plan(sessions, now)
        gate.wait(timeout=30)  # every sweep has read before any applies
        return [apply(sessions, assessment) for assessment in planned]

    with ThreadPoolExecutor(threads) as pool:
        items = [item for result in pool.map(one_sweep, range(threads)) for item in result]
    applied = [item for item in items if item.applied]
    assert sorted(item.tenant for item in applied) == sorted(slug for _, slug in tenants)
    assert not [item for item in items if item.error]
    if barrier:
        assert len([item for item in items if item.skipped]) == (threads - 1) * len(tenants)
    for tenant_id, _ in tenants:
        steps = [e for e in trail(sessions, tenant_id) if e.action.startswith("auto_")]
        assert len(steps) == 1 and steps[0].split_after == {"1": 75, "2": 25}
