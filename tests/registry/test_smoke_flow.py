"""The registry's main path on both databases: deploy by each strategy, promote, roll back."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import versions
from registry.errors import NothingToRollBack, TenantMismatch
from registry.jobs import runs
from registry.models import DeploymentStatus, FinetuningRun
from tests.factories import deploy_new, job_snapshot, make_tenant


def test_canary_then_promote_then_rollback(session: Session) -> None:
    tenant = make_tenant(session, strategy="canary", canary_percent=20)
    first = deploy_new(session, tenant)
    assert (first.version, first.traffic_percent, first.status) == (1, 100, "promoted")
    second = deploy_new(session, tenant)
    assert (second.version, second.traffic_percent, second.status) == (2, 20, "active")
    assert versions.current_split(session, tenant.id) == {1: 80, 2: 20}

    change = versions.promote(session, tenant.slug, 2, 100)
    assert change.after == {2: 100}
    back = versions.rollback(session, tenant.slug)
    assert back.after == {1: 100}
    rows = {v.version: v for v in versions.list_versions(session, tenant.slug)}
    assert rows[2].status == "deprecated" and rows[2].rolled_back_at is not None
    assert rows[1].status == "production"


def test_blue_green_stages_at_zero(session: Session) -> None:
    tenant = make_tenant(session, strategy="blue_green")
    result = deploy_new(session, tenant)
    assert result.status == DeploymentStatus.STAGED and result.traffic_percent == 0
    assert versions.current_split(session, tenant.id) == {}
    assert versions.promote(session, tenant.slug, 1).after == {1: 100}


def test_rollback_of_a_given_version_takes_only_it_out(session: Session) -> None:
    tenant = make_tenant(session, strategy="canary", canary_percent=20)
    for _ in range(3):
        deploy_new(session, tenant)
    assert versions.current_split(session, tenant.id) == {1: 64, 2: 16, 3: 20}

    change = versions.rollback(session, tenant.slug, version=2)
    assert (change.version, change.after) == (2, {1: 76, 3: 24})  # 64:20 rescaled to 100

    with pytest.raises(NothingToRollBack, match="v2 is not in production"):
        versions.rollback(session, tenant.slug, version=2)
    assert versions.current_split(session, tenant.id) == {1: 76, 3: 24}


def test_a_job_run_is_written_once_then_updated(session: Session) -> None:
    tenant = make_tenant(session)
    running = job_snapshot(status="running", fine_tuned_model=None, tenant=tenant.slug)
    _, run, first = runs.lock_and_write_run(session, running, from_event=None)
    assert first and run.status == "running"
    done = replace(running, status="succeeded", fine_tuned_model="ft:m", trained_tokens=7)
    again_tenant, again, first = runs.lock_and_write_run(
        session, done, from_event=tenant.slug, result_metrics={"loss": 0.5}
    )
    assert not first and again.id == run.id and again_tenant.id == tenant.id
    session.flush()
    stored = session.scalars(
        select(FinetuningRun).where(FinetuningRun.openai_job_id == done.job_id)
    ).one()
    assert (stored.status, stored.trained_tokens, stored.result_metrics) == (
        "succeeded",
        7,
        {"loss": 0.5},
    )


def test_a_job_run_of_another_tenant_is_a_mismatch(session: Session) -> None:
    owner, claimant = make_tenant(session), make_tenant(session)
    job = job_snapshot()
    runs.lock_and_write_run(session, job, from_event=owner.slug)
    with pytest.raises(TenantMismatch):
        runs.lock_and_write_run(session, job, from_event=claimant.slug)
