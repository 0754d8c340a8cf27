"""Outcomes that are not traffic changes are visible from the CLI: a rejected deployment, a
deployment waiting for its evaluation, a failed event, a failed operation."""

from __future__ import annotations

import pytest

from registry import operations
from registry.db import unit_of_work
from registry.jobs import events, pipeline
from registry.models import EventState
from tests.factories import deploy_new, make_tenant
from tests.worker.cli_support import ok_json, run


def test_activity_shows_rejections_failures_and_waits(
    cli_db: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with unit_of_work(cli_db) as session:
        tenant = make_tenant(session, "acme")
        deploy_new(session, tenant, recommendation="reject")
        deploy_new(session, tenant, recommendation=None)
        events.accept_event(session, "ftjob-refused", "acme", "cli")
        pipeline.fail_job(session, "ftjob-refused", "job ftjob-refused: tenants disagree")
        failing = operations.queue_operation(session, "acme", "rollback")
        operations.run_operation(session, failing.id)

    rows = ok_json(capsys, "activity", "acme")
    assert isinstance(rows, list)
    seen = {(r["kind"], r["status"]) for r in rows}
    assert {
        ("deployment", "rejected"),
        ("deployment", "awaiting_evaluation"),
        ("event", "failed"),
        ("operation", "failed"),
    } <= seen
    by_status = {r["status"]: r["detail"] for r in rows}
    assert "recommends reject" in by_status["rejected"]
    details = [r["detail"] for r in rows if r["status"] == "failed"]
    assert any("nothing to roll back" in d for d in details)
    assert any("tenants disagree" in d for d in details)

    code, out, err = run(capsys, "history", "acme")
    assert (code, err) == (0, "")
    assert "recommends reject" in out and "tenants disagree" in out

    failed = ok_json(capsys, "events", "--state", EventState.FAILED)
    assert [e["job_id"] for e in failed] == ["ftjob-refused"]  # type: ignore[union-attr]
    assert run(capsys, "events", "--state", "bogus")[0] == 2
