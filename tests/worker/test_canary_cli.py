"""`ftdeploy outcome`, `ftdeploy status` and the `ftdeploy.record_outcomes` task body, against a
real database (the task is called in this process, as a function: its Celery path is covered
end to end in test_e2e_canary.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from registry import clock, versions
from registry.models import Deployment, OutcomeCounter
from registry.settings import get_settings
from tests.factories import deploy_new, make_tenant
from tests.registry.canary_support import POLICY
from worker import cli


@pytest.fixture
def env(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> Iterator[str]:
    monkeypatch.setenv("FTDEPLOY_DATABASE_URL", db_url)
    monkeypatch.setenv("FTDEPLOY_OUTCOME_BUCKET_SECONDS", "1")
    monkeypatch.setenv("FTDEPLOY_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield db_url
    get_settings.cache_clear()


def _canary(sessions: sessionmaker[Session], slug: str) -> str:
    """v1 serves, v2 is a canary at 10% whose step began two minutes ago; returns v2's model."""
    with sessions() as session, session.begin():
        tenant = make_tenant(session, slug, **POLICY)
        deploy_new(session, tenant)
        deploy_new(session, tenant)
        session.execute(
            update(Deployment)
            .where(Deployment.tenant_id == tenant.id, Deployment.status == "active")
            .values(step_started_at=clock.now() - timedelta(minutes=2))
        )
        return versions.list_versions(session, tenant.id)[0].model_id


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    capsys.readouterr()
    assert cli.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_outcome_then_status_shows_what_the_sweep_would_do(
    env: str, sessions: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status"]) == 0
    assert "no live canaries" in capsys.readouterr().out
    model = _canary(sessions, "acme")
    _canary(sessions, "quiet")
    assert cli.main(["outcome", "acme", model, "--success", "--count", "59"]) == 0
    assert "recorded 59 successes for acme v2" in capsys.readouterr().out
    recorded = _json(
        capsys, ["outcome", "acme", "v2", "--failure", "--score", "0.5", "--latency-ms", "30"]
    )
    assert recorded == {
        "tenant": "acme",
        "version": 2,
        "model_id": model,
        "status": "production",
        "success": False,
        "recorded": 1,
    }
    rows = _json(capsys, ["status"])
    assert isinstance(rows, list) and [r["tenant"] for r in rows] == ["acme", "quiet"]
    acme, quiet = rows
    assert (acme["samples"], acme["next"], acme["next_percent"]) == (60, "step", 25)
    assert acme["value"] == pytest.approx(59 / 60) and acme["threshold"] == 0.9
    assert acme["in_step_seconds"] >= 120 and acme["steps"] == [10, 25, 50, 100]
    assert (quiet["samples"], quiet["next"]) == (0, "hold")
    assert "waiting for data: 0 of 50 requests" in quiet["reason"]
    assert cli.main(["status", "quiet"]) == 0
    out = capsys.readouterr().out
    assert "quiet" in out and "acme" not in out and "hold" in out


def test_outcome_refusals_exit_with_the_reason(
    env: str, sessions: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    _canary(sessions, "acme")
    capsys.readouterr()
    assert cli.main(["outcome", "acme", "ft:not-ours", "--success"]) == 2
    assert "tenant 'acme' has no version 'ft:not-ours'" in capsys.readouterr().err
    assert cli.main(["outcome", "ghost", "v1", "--success"]) == 3
    assert cli.main(["outcome", "acme", "v1", "--success", "--count", "0"]) == 2
    assert "invalid count" in capsys.readouterr().err
    with sessions() as session:
        assert session.scalars(select(OutcomeCounter)).all() == []
    # Once v2 takes all traffic v1 is deprecated: its outcomes are kept, and said not to count.
    with sessions() as session, session.begin():
        versions.promote(session, "acme", 2, 100)
    capsys.readouterr()
    assert cli.main(["outcome", "acme", "v1", "--failure"]) == 0
    assert "v1 is deprecated: kept, not counted toward a canary" in capsys.readouterr().out


def test_record_outcomes_task_stores_and_lists_refusals(
    env: str, sessions: sessionmaker[Session]
) -> None:
    from worker.tasks import record_outcomes

    model = _canary(sessions, "acme")
    result = record_outcomes(
        [
            {"tenant": "acme", "model": model, "success": True, "count": 5},
            {"tenant": "acme", "model": model, "success": "no"},
        ]
    )
    assert result["recorded"] == 5
    assert [(r["index"], r["field"]) for r in result["refused"]] == [(1, "success")]
    assert record_outcomes("not a list")["refused"][0]["field"] == "batch"
    with sessions() as session:
        assert sum(r.requests for r in session.scalars(select(OutcomeCounter))) == 5
