"""Random registry operations from many workers at once, and the checks that must hold throughout.

Used by test_concurrency.py: threads on PostgreSQL, processes on SQLite. A worker opens its own
engine (its own connections), runs `ops` random operations on random tenants, each in one unit of
work, and counts what happened. `check` reads the whole registry in one consistent snapshot and
lists every broken rule.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from registry.db import lock_tenant, make_engine
from registry.deployments import deploy
from registry.errors import FtdeployError, NothingToRollBack, VersionNotFound
from registry.jobs.runs import record_evaluation, record_run
from registry.models import Deployment, ModelVersion, Tenant, TrafficEvent
from registry.tenants import PolicyChanges, create_tenant, find_tenant, set_policy
from registry.versions import promote, rollback
from tests.factories import job_snapshot

STRATEGIES = ("immediate", "canary", "blue_green")
# Refusals the registry is expected to make under random input; anything else is a failure.
EXPECTED_ERRORS: tuple[type[FtdeployError], ...] = (NothingToRollBack, VersionNotFound)
WEIGHTS = {"deploy": 34, "promote": 40, "rollback": 21, "policy": 5}


@dataclass
class Tally:
    """What one worker did. `changes` counts, per tenant, the committed operations that must each
    have written exactly one audit event."""

    worker: str
    ops: int = 0
    ok: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    changes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        return make_engine(url)
    return make_engine(url, pool_size=1, max_overflow=1)


def setup_tenants(url: str, count: int, seed: int) -> list[str]:
    """`count` tenants whose policies cover every strategy, with varied canary percents."""
    rng = random.Random(seed)
    engine = engine_for(url)
    slugs = [f"churn-{index:02d}" for index in range(count)]
    try:
        with sessionmaker(engine).begin() as session:
            for index, slug in enumerate(slugs):
                tenant = create_tenant(session, slug)
                set_policy(
                    session,
                    tenant.id,
                    PolicyChanges(
                        strategy=STRATEGIES[index % len(STRATEGIES)],
                        canary_percent=rng.randint(1, 99),
                        require_evaluation=index % 4 != 3,
                    ),
                )
    finally:
        engine.dispose()
    return slugs


def _deploy(session: Session, slug: str, rng: random.Random, tag: str) -> bool:
    tenant = lock_tenant(session, find_tenant(session, slug).id)
    job = job_snapshot(job_id=f"ftjob-{tag}", fine_tuned_model=f"ft:gpt-4o-mini:acme::{tag}")
    run = record_run(session, tenant, job)
    roll = rng.random()
    if roll < 0.8:
        record_evaluation(session, job.job_id, "approve", {"accuracy": round(rng.random(), 3)})
    elif roll < 0.9:
        record_evaluation(session, job.job_id, "reject")
    result = deploy(session, tenant.id, run.id, actor=tag)
    # A rejected deployment, or one awaiting its evaluation, changes no traffic and writes no event.
    return result.version is not None


def _promote(session: Session, slug: str, rng: random.Random, tag: str) -> bool:
    tenant = find_tenant(session, slug)
    newest = session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.tenant_id == tenant.id)
    )
    # Now and then a number that does not exist (yet): VersionNotFound, nothing changed.
    promote(session, slug, rng.randint(1, (newest or 0) + 1), rng.randint(1, 100), actor=tag)
    return True


def _rollback(session: Session, slug: str, rng: random.Random, tag: str) -> bool:
    rollback(session, slug, actor=tag)
    return True


def _policy(session: Session, slug: str, rng: random.Random, tag: str) -> bool:
    tenant = find_tenant(session, slug)
    changes = PolicyChanges(strategy=rng.choice(STRATEGIES), canary_percent=rng.randint(1, 99))
    set_policy(session, tenant.id, changes)
    return False


OPERATIONS: dict[str, Callable[[Session, str, random.Random, str], bool]] = {
    "deploy": _deploy,
    "promote": _promote,
    "rollback": _rollback,
    "policy": _policy,
}


def run_worker(url: str, slugs: list[str], ops: int, seed: int, name: str) -> Tally:
    """Run `ops` random operations, each in its own transaction, with this worker's own engine."""
    rng = random.Random(seed)
    tally = Tally(worker=name)
    engine = engine_for(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    started = time.perf_counter()
    try:
        for index in range(ops):
            slug = rng.choice(slugs)
            kind = rng.choices(kinds, weights)[0]
            tag = f"{name}-{os.getpid()}-{index}"
            try:
                with sessions.begin() as session:
                    changed = OPERATIONS[kind](session, slug, rng, tag)
            except EXPECTED_ERRORS as error:
                tally.refused[type(error).__name__] += 1
            except Exception as error:  # every other failure is a finding: keep it
                tally.unexpected.append(f"{kind} on {slug}: {type(error).__name__}: {error}")
            else:
                tally.ok[kind] += 1
                if changed:
                    tally.changes[slug] += 1
            tally.ops += 1
    finally:
        tally.seconds = time.perf_counter() - started
        engine.dispose()
    return tally


def run_worker_args(args: tuple[str, list[str], int, int, str]) -> Tally:
    """`run_worker` for a process pool's map (one picklable argument)."""
    return run_worker(*args)


# ------------------------------------------------------------------------------------ checks


@dataclass(frozen=True)
class State:
    """The registry as read in one snapshot. `events` holds each tenant's whole audit trail, or
    only its latest event when read with `full_trail=False` (cheaper, for sampling)."""

    slugs: dict[Any, str]
    versions: dict[str, list[tuple[int, str, int, Any]]]  # slug -> (number, status, traffic, id)
    events: dict[str, list[tuple[dict[str, int], dict[str, int]]]]  # slug -> (before, after)
    deployment_status: dict[Any, str]  # version id -> its deployment's status
    full_trail: bool = True


def read_state(session: Session, *, full_trail: bool = True) -> State:
    slugs = {row[0]: row[1] for row in session.execute(select(Tenant.id, Tenant.slug))}
    versions: dict[str, list[tuple[int, str, int, Any]]] = defaultdict(list)
    for tenant_id, number, status, percent, version_id in session.execute(
        select(
            ModelVersion.tenant_id,
            ModelVersion.version,
            ModelVersion.status,
            ModelVersion.traffic_percent,
            ModelVersion.id,
        ).order_by(ModelVersion.tenant_id, ModelVersion.version)
    ):
        versions[slugs[tenant_id]].append((number, status, percent, version_id))
    query = select(TrafficEvent.tenant_id, TrafficEvent.split_before, TrafficEvent.split_after)
    if not full_trail:
        latest = select(func.max(TrafficEvent.id)).group_by(TrafficEvent.tenant_id)
        query = query.where(TrafficEvent.id.in_(latest.scalar_subquery()))
    events: dict[str, list[tuple[dict[str, int], dict[str, int]]]] = defaultdict(list)
    for tenant_id, before, after in session.execute(query.order_by(TrafficEvent.id)):
        events[slugs[tenant_id]].append((before, after))
    deployment_status = {
        version_id: status
        for version_id, status in session.execute(
            select(Deployment.version_id, Deployment.status).where(
                Deployment.version_id.is_not(None)
            )
        )
    }
    return State(slugs, dict(versions), dict(events), deployment_status, full_trail)


def violations(state: State) -> list[str]:
    """Every broken rule in `state` (empty when all hold)."""
    found: list[str] = []
    for slug in state.slugs.values():
        rows = state.versions.get(slug, [])
        numbers = [number for number, *_ in rows]
        if numbers != list(range(1, len(numbers) + 1)):
            found.append(f"{slug}: version numbers {numbers} are not 1..n")
        split = {str(n): p for n, status, p, _ in rows if status == "production"}
        if split and (sum(split.values()) != 100 or min(split.values()) < 1):
            found.append(f"{slug}: production split {split} does not sum to 100")
        stray = [(n, status, p) for n, status, p, _ in rows if status != "production" and p != 0]
        if stray:
            found.append(f"{slug}: versions outside production with traffic: {stray}")
        trail = state.events.get(slug, [])
        last_after: dict[str, int] = {}
        for index, (before, after) in enumerate(trail):
            if state.full_trail and before != last_after:
                found.append(f"{slug}: audit event {index} starts from {before}, not {last_after}")
            last_after = after
        if last_after != split:
            found.append(f"{slug}: last audit event says {last_after}, the versions say {split}")
        for number, status, percent, version_id in rows:
            deployment = state.deployment_status.get(version_id)
            allowed = {
                "production": {"active", "promoted"} if percent < 100 else {"promoted"},
                "staging": {"staged"},
                "deprecated": {"superseded", "rolled_back"},
            }.get(status, set())
            if deployment not in allowed:
                found.append(
                    f"{slug}: v{number} is {status} at {percent}%, deployment {deployment}"
                )
    return found


def snapshot_session(engine: Engine) -> Session:
    """A session that reads one consistent snapshot (PostgreSQL: REPEATABLE READ; SQLite: the
    engine's BEGIN IMMEDIATE already serializes it with the writers)."""
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level="REPEATABLE READ")
    return Session(engine)
