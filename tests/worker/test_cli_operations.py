"""Issue 10, operations at the CLI: `operations [SLUG]` and `operations cancel ID`; `--wait` that
times out or is interrupted says in one line that the operation is still queued and how to cancel
it; a broker that is down when an operation is queued gets one line, and the reconciler sends the
operation once the broker is back; `--force`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import redis

from registry import operations, stranded_operations
from registry.db import unit_of_work
from registry.models import OperationStatus
from tests.factories import deploy_new, make_tenant
from tests.worker.cli_support import ok_json, run
from worker.cli import output


def _canary_tenant(url: str) -> None:
    with unit_of_work(url) as session:
        tenant = make_tenant(
            session, "acme", strategy="canary", canary_percent=10, require_evaluation=False
        )
        deploy_new(session, tenant)
        deploy_new(session, tenant)


def test_item3_operations_lists_and_cancels(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _canary_tenant(cli_db)
    first = ok_json(capsys, "promote", "acme", "2", "--traffic", "30", "--actor", "alice")
    second = ok_json(capsys, "rollback", "acme", "--force", "--reason", "bad answers")
    assert isinstance(first, dict) and isinstance(second, dict)
    with unit_of_work(cli_db) as session:
        assert operations.get_operation(session, second["operation_id"]).force

    rows = ok_json(capsys, "operations", "acme")
    assert isinstance(rows, list)
    assert [r["operation_id"] for r in rows] == [second["operation_id"], first["operation_id"]]
    assert rows[1]["tenant"] == "acme" and rows[1]["actor"] == "alice"
    assert (rows[1]["kind"], rows[1]["version"], rows[1]["traffic_percent"]) == ("promote", 2, 30)

    cancelled = ok_json(
        capsys, "operations", "cancel", first["operation_id"], "--reason", "typo", "--actor", "bob"
    )
    assert isinstance(cancelled, dict)
    assert (cancelled["status"], cancelled["error"]) == ("cancelled", "cancelled by bob: typo")

    queued = ok_json(capsys, "operations", "--status", "queued", "--limit", "5")
    assert isinstance(queued, list)
    assert [r["operation_id"] for r in queued] == [second["operation_id"]]

    code, out, err = run(capsys, "operations")
    assert code == 0 and err == ""
    header = out.splitlines()[0].split()
    assert header == [
        "id", "tenant", "kind", "version", "percent", "status", "reason", "actor", "created",
        "finished",
    ]  # fmt: skip
    assert "cancelled by bob: typo" in out and "bad answers" in out

    # Cancelling it again is refused, with its own error and the "failed" status.
    code, out, err = run(capsys, "operations", "cancel", first["operation_id"], "--json")
    assert (code, out) == (output.FAILED, "")
    problem = json.loads(err)["error"]
    assert problem["type"] == "OperationNotCancellable" and "has ended" in problem["message"]
    code, _, err = run(capsys, "operations", "cancel")
    assert code == output.BAD_INPUT and "needs the operation's ID" in err
    code, _, err = run(capsys, "operations", "cancel", "not-an-id")
    assert code == output.BAD_INPUT
    code, _, err = run(capsys, "operations", "nobody")
    assert code == output.NOT_FOUND


def test_item3_operations_help_is_tidy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "operations", "--help")
    assert code == 0
    assert "SLUG | cancel" in out and "--status" in out and "--limit" in out
    code, out, _ = run(capsys, "--help")
    assert "operations" in out


def test_item4_wait_that_times_out_says_in_one_line_how_to_cancel(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _canary_tenant(cli_db)
    code, out, err = run(capsys, "promote", "acme", "2", "--wait", "--timeout", "0.3")
    assert code == output.STILL_RUNNING and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "still queued" in lines[0] and "Traceback" not in err
    with unit_of_work(cli_db) as session:
        (operation, _), *_ = operations.list_operations(session, "acme")
    assert f"ftdeploy operations cancel {operation.id}" in lines[0]


def test_item4_ctrl_c_during_wait_says_in_one_line_how_to_cancel(
    cli_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _canary_tenant(cli_db)

    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupted)
    code, out, err = run(capsys, "rollback", "acme", "--wait", "--json")
    assert code == output.STILL_RUNNING and out == ""
    assert len(err.splitlines()) == 1
    problem = json.loads(err)["error"]
    assert problem["type"] == "OperationStillQueued"
    assert (
        "still queued" in problem["message"] and "ftdeploy operations cancel" in problem["message"]
    )


def test_item5_broker_down_when_queueing_is_one_line_then_the_reconciler_sends_it(
    pg_url: str, broker_down: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    _canary_tenant(pg_url)
    started = time.monotonic()
    code, out, err = run(capsys, "promote", "acme", "2", "--traffic", "30", "--wait")
    assert time.monotonic() - started < 60
    assert code == output.NOT_SENT and out == ""
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "broker is unavailable" in err
    assert "reconciler sends it when the broker is back" in err
    with unit_of_work(pg_url) as session:
        ((operation, _),) = operations.list_operations(session, "acme")
        assert str(operation.id) in err
        assert operation.status == OperationStatus.QUEUED and operation.enqueued_at is None

    # The broker is back: beat's reconciler sends it (once past its grace period).
    broker = broker_down()  # brings a broker back
    with unit_of_work(pg_url) as session:
        found = stranded_operations.reconcile(
            session, grace=timedelta(0), stalled_after=timedelta(hours=2)
        )
    assert found.unsent == [operation.id]
    with unit_of_work(pg_url) as session:
        assert operations.get_operation(session, operation.id).enqueued_at is not None
    queued = redis.Redis.from_url(broker).lrange("ftdeploy", 0, -1)
    assert len(queued) == 1 and str(operation.id).encode() in queued[0]
