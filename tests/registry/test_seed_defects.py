"""The ten defects of the seed (DESIGN.md, "Defects in the seed that we fix"), one test each.

Each test sets up the situation the seed gets wrong and pins what we do instead. Defects 1 and 3
race real threads, each with its own connection, on PostgreSQL; the rest run on both databases.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from registry import deployments, routing, traffic, versions
from registry.db import lock_tenant, session_factory, unit_of_work
from registry.errors import (
    FtdeployError,
    InvalidInput,
    InvariantViolation,
    NothingToRollBack,
    VersionNotFound,
)
from registry.jobs.runs import record_run
from registry.models import Deployment, DeploymentPolicy, ModelVersion, Tenant, TrafficEvent
from registry.routing import Router
from registry.tenants import PolicyChanges, get_policy, set_policy
from tests.dbdump import diff, dump
from tests.factories import deploy_new, job_snapshot, make_evaluation, make_run, make_tenant


def split(session: Session, tenant: Tenant) -> dict[int, int]:
    return versions.current_split(session, tenant.id)


def versions_of(url: str, slug: str) -> list[ModelVersion]:
    with unit_of_work(url) as session:
        return versions.list_versions(session, slug)


def statuses(session: Session, tenant: Tenant) -> dict[int, tuple[str, int]]:
    rows = versions.list_versions(session, tenant.id)
    return {v.version: (v.status, v.traffic_percent) for v in rows}


def deployment_status(session: Session, tenant: Tenant, number: int) -> str:
    version = versions.find_version(session, tenant, number)
    deployment = session.scalars(
        select(Deployment)
        .where(Deployment.version_id == version.id)
        .execution_options(populate_existing=True)
    ).one()
    return deployment.status


def use_strategy(session: Session, tenant: Tenant, strategy: str, percent: int = 10) -> None:
    set_policy(session, tenant.id, PolicyChanges(strategy=strategy, canary_percent=percent))


def audit_trail(session: Session, tenant: Tenant) -> list[TrafficEvent]:
    return list(
        session.scalars(
            select(TrafficEvent)
            .where(TrafficEvent.tenant_id == tenant.id)
            .order_by(TrafficEvent.id)
        )
    )


def assert_unbroken_trail(session: Session, tenant: Tenant) -> list[TrafficEvent]:
    """Each audit event starts from the split the previous one left, the last one is the current
    split: what a lost update (two changes deciding from the same state) would break."""
    trail = audit_trail(session, tenant)
    previous: dict[str, int] = {}
    for event in trail:
        assert event.split_before == previous, (event.id, event.split_before, previous)
        assert traffic.is_valid({int(k): v for k, v in event.split_after.items()})
        previous = event.split_after
    assert previous == traffic.as_json(split(session, tenant))
    return trail


def race(
    url: str, workers: int, rounds: int, step: Callable[[Session, int, int], None]
) -> list[str]:
    """Run `step(session, worker, round)` in `workers` threads, each round started together by a
    barrier, each call in its own transaction on the thread's own connection. Returns what each
    call did: "ok" or the name of the error it raised."""
    sessions = session_factory(url)
    barrier = threading.Barrier(workers)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        for round_ in range(rounds):
            barrier.wait(timeout=60)
            try:
                with sessions.begin() as session:
                    step(session, index, round_)
                outcome = "ok"
            except FtdeployError as error:
                outcome = type(error).__name__
            except Exception as error:
                outcome = f"unexpected {type(error).__name__}: {error}"
            with lock:
                outcomes.append(outcome)

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(worker, index) for index in range(workers)]:
            future.result()
    return outcomes


# ----------------------------------------------------------------------------- defect 1


def test_defect_1_no_transactions_concurrent_promote_and_rollback_keep_100(pg_url: str) -> None:
    """Seed: promote and rollback are separate updates, so concurrent calls mix their halves and
    leave the tenant at other than 100%. Here 8 threads race promotes and rollbacks on one tenant;
    each change is one transaction under the tenant's lock."""
    with unit_of_work(pg_url) as session:
        tenant = make_tenant(session, "race", strategy="canary", canary_percent=30)
        deploy_new(session, tenant)  # v1 100
        deploy_new(session, tenant)  # v2 30, v1 70
        use_strategy(session, tenant, "blue_green")
        for _ in range(4):
            deploy_new(session, tenant)  # v3..v6 staged
        slug = tenant.slug

    def step(session: Session, worker: int, round_: int) -> None:
        rng = random.Random(worker * 1000 + round_)
        if rng.random() < 0.3:
            versions.rollback(session, slug, actor=f"w{worker}")
        else:
            versions.promote(
                session, slug, rng.randint(1, 6), rng.randint(1, 100), actor=f"w{worker}"
            )

    outcomes = race(pg_url, workers=8, rounds=12, step=step)
    assert [o for o in outcomes if o not in ("ok", "NothingToRollBack")] == []

    with unit_of_work(pg_url) as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == slug)).one()
        assert traffic.is_valid(split(session, tenant))
        assert all(p == 0 for s, p in statuses(session, tenant).values() if s != "production")
        trail = assert_unbroken_trail(session, tenant)
        # One event per change of the setup (2 deploys, 4 staged registrations), one per success.
        setup_events = 6
        assert len(trail) == setup_events + outcomes.count("ok")


# ----------------------------------------------------------------------------- defect 2


def test_defect_2_partial_promote_shares_the_rest_in_proportion(session: Session) -> None:
    """Seed: a partial promote sets every other production version to 100 - p: with two others
    at 60/40, promoting a third to 30% gives 70 + 70 + 30 = 170."""
    tenant = make_tenant(session, strategy="canary", canary_percent=40)
    deploy_new(session, tenant)
    deploy_new(session, tenant)
    assert split(session, tenant) == {1: 60, 2: 40}
    use_strategy(session, tenant, "blue_green")
    deploy_new(session, tenant)

    change = versions.promote(session, tenant.slug, 3, 30)

    assert change.after == {1: 42, 2: 28, 3: 30}
    assert split(session, tenant) == {1: 42, 2: 28, 3: 30}

    # With rounding: the others still get exactly 100 - p between them, each within 1 point of
    # its proportional share.
    deploy_new(session, tenant)
    before = split(session, tenant)
    after = versions.promote(session, tenant.slug, 4, 7).after
    assert sum(after.values()) == 100 and after[4] == 7
    for number, share in before.items():
        assert abs(after[number] - share * 93 / 100) < 1


# ----------------------------------------------------------------------------- defect 3


def test_defect_3_concurrent_registrations_get_consecutive_numbers(pg_url: str) -> None:
    """Seed: the next version number is read, then inserted, so concurrent registrations of one
    tenant pick the same number. Here 8 threads register together, 5 rounds: v1..v40, no
    collision, no error."""
    with unit_of_work(pg_url) as session:
        tenant = make_tenant(session, "registrations", strategy="blue_green")
        slug, tenant_id = tenant.slug, tenant.id

    def step(session: Session, worker: int, round_: int) -> None:
        tenant = lock_tenant(session, tenant_id)
        run = record_run(session, tenant, job_snapshot())
        make_evaluation(session, run)
        deployments.deploy(session, slug, run.id)

    outcomes = race(pg_url, workers=8, rounds=5, step=step)
    assert outcomes == ["ok"] * 40

    with unit_of_work(pg_url) as session:
        rows = versions.list_versions(session, slug)
        assert sorted(v.version for v in rows) == list(range(1, 41))
        assert len({v.run_id for v in rows}) == 40
        assert {v.name for v in rows} == {f"v{n}" for n in range(1, 41)}


# ----------------------------------------------------------------------------- defect 4


def test_defect_4_promote_cannot_reach_another_tenants_version(db_url: str) -> None:
    """Seed: promoteToProduction(versionId) has no tenant check, so any caller changes any
    tenant. Here a version is always named within a tenant: tenant B asking for "its" v3, which
    only tenant A has, is VersionNotFound and nothing anywhere changes."""
    with unit_of_work(db_url) as session:
        a = make_tenant(session, "tenant-a", strategy="blue_green")
        for _ in range(3):
            deploy_new(session, a)
        versions.promote(session, a.slug, 1)
        b = make_tenant(session, "tenant-b", require_evaluation=False)
        deploy_new(session, b)
        a_v3 = versions.find_version(session, a, 3).id

    before = dump(db_url)
    with session_factory(db_url)() as session:
        with pytest.raises(VersionNotFound) as refused:
            versions.promote(session, "tenant-b", 3, 50)
        assert (refused.value.tenant, refused.value.version) == ("tenant-b", 3)
        # Nor can the other tenant's version be named by its id.
        with pytest.raises(InvalidInput):
            versions.promote(session, "tenant-b", str(a_v3), 50)  # type: ignore[arg-type]
        session.commit()  # whatever the refused calls did would now be kept
    assert diff(before, dump(db_url)) == {}

    # A's own promote changes A only.
    with unit_of_work(db_url) as session:
        versions.promote(session, "tenant-a", 3, 50)
    after = dump(db_url)
    for table in ("ai_model_versions", "ai_traffic_events", "ai_deployments"):
        changed = [row for row in after[table] if row not in before[table]]
        assert changed, table
        assert all(a.id in row for row in changed), table  # only tenant A's rows


# ----------------------------------------------------------------------------- defect 5


def test_defect_5_rollback_during_canary_aborts_the_canary(session: Session) -> None:
    """Seed: rollback restores the newest *deprecated* version to 100% while the current one
    still serves (v1 100 + v2 90 = 190), and a later rollback can restore a version that was
    itself rolled back."""
    tenant = make_tenant(session, require_evaluation=False)
    deploy_new(session, tenant)  # v1 100
    deploy_new(session, tenant)  # v2 100, v1 deprecated
    use_strategy(session, tenant, "canary", 10)
    deploy_new(session, tenant)  # v3 canary 10, v2 90
    assert split(session, tenant) == {2: 90, 3: 10}

    change = versions.rollback(session, tenant.slug)

    assert change.after == {2: 100}  # the canary is aborted; v1 stays deprecated
    assert statuses(session, tenant) == {
        1: ("deprecated", 0),
        2: ("production", 100),
        3: ("deprecated", 0),
    }

    # v2 is rolled back: v1 (served before it) returns. v3, rolled back, is never restored.
    assert versions.rollback(session, tenant.slug).after == {1: 100}
    with pytest.raises(NothingToRollBack):
        versions.rollback(session, tenant.slug)
    assert split(session, tenant) == {1: 100}

    # A newer version, then a rollback: v1 returns, not v3 or v2 (both rolled back before).
    use_strategy(session, tenant, "immediate")
    deploy_new(session, tenant)  # v4 100
    assert versions.rollback(session, tenant.slug).after == {1: 100}


# ----------------------------------------------------------------------------- defect 6


def _snapshot(rows: dict[int, int], ids: dict[int, uuid.UUID]) -> routing.Snapshot:
    return routing.build_snapshot(
        uuid.uuid4(), [(ids[v], v, f"model-v{v}", p) for v, p in rows.items()], 0.0
    )


def test_defect_6_resolve_is_sticky_and_a_broken_split_is_an_error(db_url: str) -> None:
    """Seed: getActiveModel draws a new random number per request (a user flips between models)
    and quietly serves versions[0] when the split does not add up."""
    ids = {1: uuid.uuid4(), 2: uuid.uuid4()}
    first, second = _snapshot({1: 70, 2: 30}, ids), _snapshot({1: 70, 2: 30}, ids)
    subjects = [f"user-{n}" for n in range(2000)]
    picks = {s: first.pick(s) for s in subjects}
    for _ in range(3):
        assert {s: first.pick(s) for s in subjects} == picks
    # Another process (a fresh snapshot, no memo) gives every subject the same model.
    assert {s: second.pick(s) for s in subjects} == picks
    assert set(picks.values()) == {"model-v1", "model-v2"}

    # A split that does not sum to 100 raises instead of serving the first version.
    for broken in ({1: 60, 2: 30}, {1: 80, 2: 30}):
        with pytest.raises(InvariantViolation):
            _snapshot(broken, ids)

    # The same through the database: a split corrupted behind the registry's back is refused.
    with unit_of_work(db_url) as session:
        tenant = make_tenant(session, "sticky", strategy="canary", canary_percent=30)
        deploy_new(session, tenant)
        deploy_new(session, tenant)
    router = Router(session_factory(db_url), staleness=0)
    chosen = {s: router.resolve("sticky", s) for s in subjects[:200]}
    other_process = Router(session_factory(db_url), staleness=0)
    assert {s: other_process.resolve("sticky", s) for s in chosen} == chosen
    assert set(chosen.values()) == {v.model_id for v in versions_of(db_url, "sticky")}
    with unit_of_work(db_url) as session:
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.tenant_id == tenant.id, ModelVersion.version == 1)
            .values(traffic_percent=50)
        )
    with pytest.raises(InvariantViolation):
        router.resolve("sticky", "user-1")
    with pytest.raises(InvariantViolation):
        router.resolve("sticky")


# ----------------------------------------------------------------------------- defect 7


@pytest.fixture
def deploy_fault(db_url: str) -> Iterator[Callable[[str], None]]:
    """Arms a database fault: a write of the deploy, after the version is registered and the
    traffic moved, violates a constraint the test added (PostgreSQL: a CHECK constraint, NOT
    VALID so existing rows pass; SQLite cannot add one, so a trigger aborts the same way)."""
    armed: list[str] = []

    def arm(where: str) -> None:
        table, column, value = {
            "deployment row": ("ai_deployments", "status", "active"),
            "audit event": ("ai_traffic_events", "action", "deploy"),
        }[where]
        with unit_of_work(db_url) as session:
            if db_url.startswith("postgresql"):
                session.execute(
                    text(
                        f"ALTER TABLE {table} ADD CONSTRAINT ck_test_fault "
                        f"CHECK ({column} <> '{value}') NOT VALID"
                    )
                )
            else:
                for event in ("INSERT", "UPDATE"):
                    session.execute(
                        text(
                            f"CREATE TRIGGER test_fault_{event.lower()} BEFORE {event} ON {table} "
                            f"WHEN NEW.{column} = '{value}' "
                            "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
                        )
                    )
        armed.append(table)

    yield arm
    with unit_of_work(db_url) as session:
        for table in armed:
            if db_url.startswith("postgresql"):
                session.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT ck_test_fault"))
            else:
                session.execute(text("DROP TRIGGER test_fault_insert"))
                session.execute(text("DROP TRIGGER test_fault_update"))


@pytest.mark.parametrize("where", ["deployment row", "audit event"])
def test_defect_7_a_failure_in_the_middle_of_deploy_leaves_nothing(
    db_url: str, deploy_fault: Callable[[str], None], where: str
) -> None:
    """Seed: deploy registers the version, then promotes, then records the deployment, as three
    writes: a failure in between leaves a registered (even serving) version with no deployment.
    Here a database error at the deployment row or the audit event, after the version was
    registered and the traffic moved, leaves the database exactly as it was."""
    with unit_of_work(db_url) as session:
        tenant = make_tenant(session, "halfway", strategy="canary", canary_percent=25)
        deploy_new(session, tenant)
        run = make_run(session, tenant)
        make_evaluation(session, run)
        run_id = run.id
    deploy_fault(where)
    before = dump(db_url)

    with pytest.raises(DBAPIError), unit_of_work(db_url) as session:
        deployments.deploy(session, "halfway", run_id)

    assert diff(before, dump(db_url)) == {}


def test_defect_7_an_invariant_violation_in_deploy_leaves_nothing(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same with the registry's own last check failing: a split that does not add up is
    refused before commit, and the version registered before it is gone with it."""
    with unit_of_work(db_url) as session:
        tenant = make_tenant(session, "broken-split", strategy="canary", canary_percent=25)
        deploy_new(session, tenant)
        run = make_run(session, tenant)
        make_evaluation(session, run)
        run_id = run.id
    before = dump(db_url)

    real_after_promote = traffic.after_promote

    def short_by_ten(current: dict[int, int], version: int, percent: int) -> dict[int, int]:
        target = real_after_promote(current, version, percent)
        oldest = min(target)
        return {**target, oldest: target[oldest] - 10}

    monkeypatch.setattr(traffic, "after_promote", short_by_ten)
    with pytest.raises(InvariantViolation), unit_of_work(db_url) as session:
        deployments.deploy(session, "broken-split", run_id)
    assert diff(before, dump(db_url)) == {}

    # Once the fault is gone the same run deploys, as v2: no number was burnt.
    monkeypatch.setattr(traffic, "after_promote", real_after_promote)
    with unit_of_work(db_url) as session:
        result = deployments.deploy(session, "broken-split", run_id)
        assert (result.version, result.traffic_percent) == (2, 25)


# ----------------------------------------------------------------------------- defect 8


def test_defect_8_canary_percent_zero_is_refused_and_stored_percent_used(
    session: Session,
) -> None:
    """Seed: `canaryPercent || 10` turns 0 into 10, and no percent is range-checked."""
    tenant = make_tenant(session, strategy="canary", canary_percent=5)
    policy_before = (get_policy(session, tenant.id).canary_percent, "canary")

    for bad in (0, 100, -1, 150):
        with pytest.raises(InvalidInput):
            set_policy(session, tenant.id, PolicyChanges(canary_percent=bad))
    policy = get_policy(session, tenant.id)
    session.refresh(policy)
    assert (policy.canary_percent, policy.strategy) == policy_before

    # Behind the registry's back, the database refuses 0 too.
    with pytest.raises(IntegrityError), session.begin_nested():
        session.execute(
            update(DeploymentPolicy)
            .where(DeploymentPolicy.tenant_id == tenant.id)
            .values(canary_percent=0)
        )

    deploy_new(session, tenant)  # v1 takes 100 (nothing else serves)
    second = deploy_new(session, tenant)
    assert (second.version, second.traffic_percent) == (2, 5)  # 5 as stored, not 10
    assert split(session, tenant) == {1: 95, 2: 5}

    set_policy(session, tenant.id, PolicyChanges(canary_percent=1))
    assert deploy_new(session, tenant).traffic_percent == 1

    # Every percent from outside is range-checked.
    for bad_percent in (0, 101, -5):
        with pytest.raises(InvalidInput):
            versions.promote(session, tenant.slug, 2, bad_percent)
    assert split(session, tenant)[3] == 1


# ----------------------------------------------------------------------------- defect 9


def test_defect_9_a_first_canary_records_the_100_it_serves(session: Session) -> None:
    """Seed: the first deployment of a tenant as a 10% canary records 10% while, with nothing
    else serving, it takes all the traffic."""
    tenant = make_tenant(session, strategy="canary", canary_percent=10)

    first = deploy_new(session, tenant)

    assert (first.version, first.traffic_percent, first.status) == (1, 100, "promoted")
    assert statuses(session, tenant) == {1: ("production", 100)}
    deployment = session.scalars(select(Deployment).where(Deployment.tenant_id == tenant.id)).one()
    assert (deployment.initial_traffic, deployment.status) == (100, "promoted")
    assert "takes all traffic" in (deployment.reason or "")
    event = audit_trail(session, tenant)[-1]
    assert (event.split_before, event.split_after) == ({}, {"1": 100})

    # The second one is a real canary and records what it serves.
    second = deploy_new(session, tenant)
    assert (second.traffic_percent, second.status) == (10, "active")
    assert split(session, tenant) == {1: 90, 2: 10}


# ----------------------------------------------------------------------------- defect 10


def test_defect_10_deployment_rows_follow_their_versions(session: Session) -> None:
    """Seed: the deployment row's status never changes after it is written (and auto_promote,
    its threshold and `archived` are stored but unused). Here a deployment goes active ->
    promoted, promoted -> superseded, active -> rolled_back, staged -> active/promoted, and a
    restored version's deployment is promoted again.

    Acting on auto_promote (the sweep) and retiring versions to `archived` belong to issue 4;
    here only what issue 2 builds is pinned: the policy's auto_promote and threshold are copied
    onto each deployment, and `archived` is an allowed status that nothing sets yet."""
    tenant = make_tenant(
        session, strategy="canary", canary_percent=20, auto_promote=True, auto_promote_threshold=0.9
    )
    deploy_new(session, tenant)  # v1: promoted (nothing else served)
    deploy_new(session, tenant)  # v2: canary 20%
    assert deployment_status(session, tenant, 1) == "promoted"
    assert deployment_status(session, tenant, 2) == "active"
    deployment = session.scalars(
        select(Deployment).where(Deployment.tenant_id == tenant.id).limit(1)
    ).first()
    assert deployment is not None
    assert (deployment.auto_promote, deployment.auto_promote_threshold) == (True, 0.9)

    versions.promote(session, tenant.slug, 2, 50)  # a step: still active
    assert deployment_status(session, tenant, 2) == "active"
    versions.promote(session, tenant.slug, 2, 100)
    assert deployment_status(session, tenant, 2) == "promoted"
    assert deployment_status(session, tenant, 1) == "superseded"

    deploy_new(session, tenant)  # v3: canary
    versions.rollback(session, tenant.slug)
    assert deployment_status(session, tenant, 3) == "rolled_back"
    assert deployment_status(session, tenant, 2) == "promoted"

    versions.rollback(session, tenant.slug)  # v2 rolled back, v1 restored to 100
    assert deployment_status(session, tenant, 2) == "rolled_back"
    assert deployment_status(session, tenant, 1) == "promoted"

    use_strategy(session, tenant, "blue_green")
    deploy_new(session, tenant)  # v4: staged
    assert deployment_status(session, tenant, 4) == "staged"
    versions.promote(session, tenant.slug, 4, 30)
    assert deployment_status(session, tenant, 4) == "active"
    versions.promote(session, tenant.slug, 4, 100)
    assert deployment_status(session, tenant, 4) == "promoted"
    assert deployment_status(session, tenant, 1) == "superseded"
