"""The checks every fault test ends with, whatever it broke on the way:

1. every tenant's production traffic sums to 100, or nothing of it is live, and only production
   versions carry traffic;
2. every tenant's versions are 1..n, without gaps or duplicates, and its audit trail is one
   chain (each change starts from the split the previous one left; the last one left the split
   in force): no change was lost or applied twice;
3. each accepted event took effect exactly once: it ended (done or failed, no attempt left in
   flight), its job has at most one run, the run at most one version and one deployment, and
   that version was deployed by one audited change;
4. no row of an uninvolved tenant (the bystander, made before the faults) changed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from registry import operations
from registry.db import session_factory, unit_of_work
from registry.jobs import events
from registry.models import (
    Base,
    Deployment,
    EventState,
    FinetuningRun,
    JobEvent,
    ModelVersion,
    Tenant,
    TrafficEvent,
    VersionStatus,
)
from tests.factories import deploy_new, make_tenant

Rows = dict[str, list[tuple[Any, ...]]]


@dataclass(frozen=True)
class Bystander:
    slug: str
    tenant_id: uuid.UUID
    rows: Rows


def make_bystander(url: str, slug: str = "bystander") -> Bystander:
    """A tenant with some history (canary steps, an operator's promotion, a handled event) that
    no fault test touches; its rows are read back by `check_all`."""
    with unit_of_work(url) as session:
        tenant = make_tenant(session, slug, require_evaluation=False, strategy="canary")
        results = [deploy_new(session, tenant, recommendation=None) for _ in range(3)]
        operation = operations.queue_operation(
            session, slug, "promote", version=results[1].version, traffic_percent=50
        )
        operations.run_operation(session, operation.id)
        run = session.get_one(FinetuningRun, _run_of(session, tenant.id))
        events.accept_event(session, run.openai_job_id, slug, "cli")
        events.finish_event(session, run.openai_job_id, EventState.DONE, "handled before")
        tenant_id = tenant.id
    return Bystander(slug, tenant_id, tenant_rows(url, tenant_id))


def _run_of(session: Session, tenant_id: uuid.UUID) -> uuid.UUID:
    return session.scalars(
        select(FinetuningRun.id).where(FinetuningRun.tenant_id == tenant_id).limit(1)
    ).one()


def tenant_rows(url: str, tenant_id: uuid.UUID) -> Rows:
    """Every row that belongs to the tenant, table by table, in primary-key order."""
    rows: Rows = {}
    with session_factory(url)() as session:
        slug = session.scalars(select(Tenant.slug).where(Tenant.id == tenant_id)).one()
        runs = select(FinetuningRun.id).where(FinetuningRun.tenant_id == tenant_id)
        jobs = select(FinetuningRun.openai_job_id).where(FinetuningRun.tenant_id == tenant_id)
        for table in Base.metadata.sorted_tables:
            condition = _belongs(table, tenant_id, slug, runs, jobs)
            if condition is None:
                continue
            query = select(table).where(condition).order_by(*table.primary_key.columns)
            rows[table.name] = [tuple(row) for row in session.execute(query)]
    return rows


def _belongs(table: Table, tenant_id: uuid.UUID, slug: str, runs: Any, jobs: Any) -> Any:
    columns = table.columns
    if table.name == Tenant.__tablename__:
        return columns["id"] == tenant_id
    if "tenant_id" in columns:
        return columns["tenant_id"] == tenant_id
    if "run_id" in columns:
        return columns["run_id"].in_(runs)
    if table.name == JobEvent.__tablename__:
        return columns["openai_job_id"].in_(jobs) | columns["tenant_hint"].in_(
            [slug, str(tenant_id)]
        )
    return None


def check_all(
    url: str, *, accepted: Iterable[str] = (), bystander: Bystander | None = None
) -> None:
    """Run every check; raise AssertionError listing every problem found."""
    problems: list[str] = []
    with session_factory(url)() as session:
        for tenant in session.scalars(select(Tenant).order_by(Tenant.slug)):
            problems += _check_tenant(session, tenant)
        problems += _check_events(session, list(accepted))
    if bystander is not None:
        now = tenant_rows(url, bystander.tenant_id)
        changed = sorted(
            t for t in set(now) | set(bystander.rows) if now.get(t) != bystander.rows.get(t)
        )
        if changed:
            problems.append(f"bystander {bystander.slug!r}: rows changed in {changed}")
    assert not problems, "fault-suite checks failed:\n  " + "\n  ".join(problems)


def _check_tenant(session: Session, tenant: Tenant) -> list[str]:
    problems = []
    rows = session.execute(
        select(ModelVersion.version, ModelVersion.status, ModelVersion.traffic_percent)
        .where(ModelVersion.tenant_id == tenant.id)
        .order_by(ModelVersion.version)
    ).all()
    split = {v: t for v, s, t in rows if s == VersionStatus.PRODUCTION}
    if split and sum(split.values()) != 100:
        problems.append(f"{tenant.slug}: production traffic {split} sums to {sum(split.values())}")
    stray = [v for v, s, t in rows if s != VersionStatus.PRODUCTION and t != 0]
    if stray or any(t <= 0 for t in split.values()):
        problems.append(f"{tenant.slug}: traffic outside production or a zero share: {rows}")
    numbers = [v for v, _, _ in rows]
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"{tenant.slug}: versions {numbers} have gaps or duplicates")

    trail = session.execute(
        select(
            TrafficEvent.id,
            TrafficEvent.action,
            TrafficEvent.split_before,
            TrafficEvent.split_after,
        )
        .where(TrafficEvent.tenant_id == tenant.id)
        .order_by(TrafficEvent.id)
    ).all()
    expected_before: dict[str, int] = {}
    for event_id, action, before, after in trail:
        if before != expected_before:
            problems.append(
                f"{tenant.slug}: audit event {event_id} ({action}) starts from {before}, "
                f"but the previous change left {expected_before}"
            )
        expected_before = after
    if trail and expected_before != {str(v): t for v, t in sorted(split.items())}:
        problems.append(
            f"{tenant.slug}: the audit trail ends at {expected_before} but the split is {split}"
        )
    return problems


def _check_events(session: Session, accepted: list[str]) -> list[str]:
    problems = []
    all_events = {e.openai_job_id: e for e in session.scalars(select(JobEvent))}
    for job_id in accepted:
        if job_id not in all_events:
            problems.append(f"event {job_id}: accepted but not recorded")
    for job_id, event in sorted(all_events.items()):
        if event.state not in (EventState.DONE, EventState.FAILED):
            problems.append(f"event {job_id}: still {event.state} ({event.outcome})")
        if event.in_flight_since is not None:
            problems.append(f"event {job_id}: an attempt is still marked in flight")
        runs = session.scalars(
            select(FinetuningRun).where(FinetuningRun.openai_job_id == job_id)
        ).all()
        if len(runs) > 1:
            problems.append(f"event {job_id}: {len(runs)} runs")
        for run in runs:
            made = session.scalars(select(ModelVersion).where(ModelVersion.run_id == run.id)).all()
            deployments = session.scalars(
                select(Deployment).where(Deployment.run_id == run.id)
            ).all()
            if len(made) > 1 or len(deployments) > 1:
                problems.append(
                    f"event {job_id}: {len(made)} versions, {len(deployments)} deployments"
                )
            for version in made:
                audited = session.scalars(
                    select(TrafficEvent.id).where(
                        TrafficEvent.tenant_id == version.tenant_id,
                        TrafficEvent.action == "deploy",
                        TrafficEvent.version == version.version,
                    )
                ).all()
                if len(audited) > 1:
                    problems.append(
                        f"event {job_id}: v{version.version} deployed {len(audited)} times"
                    )
    return problems
