"""Issue 10, item 7 — the audit trail: policy changes, pause and resume in `history`; `--reason`
and the actor on promote and rollback; rolled-back versions shown as such; `tenant list`; a
paused tenant's canaries left alone by the sweep and shown as paused by `status`."""

from __future__ import annotations

import getpass
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from registry import operations, versions
from registry.db import session_factory, unit_of_work
from registry.models import AuditEvent
from tests.factories import deploy_new, make_tenant
from tests.registry.canary_support import (
    Clock,
    auto_promote_sweep,
    canary_tenant,
    record,
    simulated_clock,
    split,
)
from tests.worker.cli_support import ok_json, run


@pytest.fixture
def clock() -> Iterator[Clock]:
    with simulated_clock() as fake:
        yield fake


def _trail(capsys: pytest.CaptureFixture[str], slug: str) -> list[dict[str, object]]:
    rows = ok_json(capsys, "history", slug)
    assert isinstance(rows, list)
    return rows


def test_item7_policy_change_appears_in_history_with_actor_and_before_after(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "tenant", "add", "acme", "--actor", "alice")[0] == 0
    code, _, err = run(
        capsys,
        "tenant",
        "policy",
        "acme",
        "--strategy",
        "canary",
        "--canary-percent",
        "20",
        "--reason",
        "try canaries",
        "--actor",
        "bob",
    )
    assert (code, err) == (0, "")
    # Changing nothing writes nothing.
    assert run(capsys, "tenant", "policy", "acme", "--strategy", "canary")[0] == 0

    audit = [r for r in _trail(capsys, "acme") if r["kind"] == "audit"]
    assert [(r["action"], r["actor"]) for r in audit] == [
        ("policy", "bob"),
        ("tenant_added", "alice"),
    ]
    change = audit[0]
    assert change["before"] == {"strategy": "immediate", "canary_percent": 10}
    assert change["after"] == {"strategy": "canary", "canary_percent": 20}
    assert change["reason"] == "try canaries"

    code, out, _ = run(capsys, "history", "acme")
    assert code == 0
    assert "strategy=immediate canary_percent=10" in out
    assert "strategy=canary canary_percent=20" in out and "bob" in out


def test_item7_policy_change_and_its_audit_row_share_a_transaction(cli_db: str) -> None:
    from registry.tenants import PolicyChanges, set_policy

    with unit_of_work(cli_db) as session:
        tenant = make_tenant(session, "acme")
    with pytest.raises(RuntimeError), unit_of_work(cli_db) as session:
        set_policy(session, tenant.id, PolicyChanges(min_samples=7), actor="x")
        raise RuntimeError("the door fails before its commit")
    with unit_of_work(cli_db) as session:
        actions = session.scalars(select(AuditEvent.action)).all()
    assert "policy" not in actions


def test_item7_promote_and_rollback_take_reason_and_default_actor_is_the_os_user(
    cli_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with unit_of_work(cli_db) as session:
        tenant = make_tenant(session, "acme", strategy="canary", canary_percent=20)
        deploy_new(session, tenant)
        deploy_new(session, tenant)
    monkeypatch.setattr(getpass, "getuser", lambda: "carol")

    queued = ok_json(capsys, "promote", "acme", "2", "--reason", "metrics look good")
    assert isinstance(queued, dict)
    with unit_of_work(cli_db) as session:
        operation = operations.get_operation(session, queued["operation_id"])
        assert (operation.actor, operation.reason) == ("carol", "metrics look good")
        operations.run_operation(session, operation.id)

    queued = ok_json(capsys, "rollback", "acme", "--reason", "bad answers", "--actor", "dave")
    assert isinstance(queued, dict)
    with unit_of_work(cli_db) as session:
        operations.run_operation(session, queued["operation_id"])

    traffic = [r for r in _trail(capsys, "acme") if r["kind"] == "traffic"]
    assert [(r["action"], r["actor"], r["reason"]) for r in traffic[:2]] == [
        ("rollback", "operator:dave", "bad answers"),
        ("promote", "operator:carol", "metrics look good"),
    ]


def test_item7_actor_falls_back_to_operator_without_a_user_name(
    cli_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_user() -> str:
        raise OSError("no login name")

    monkeypatch.setattr(getpass, "getuser", no_user)
    assert run(capsys, "tenant", "add", "acme")[0] == 0
    [added] = [r for r in _trail(capsys, "acme") if r["action"] == "tenant_added"]
    assert added["actor"] == "operator"


def test_item7_versions_shows_a_rolled_back_version(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with unit_of_work(cli_db) as session:
        tenant = make_tenant(session, "acme")
        deploy_new(session, tenant)
        deploy_new(session, tenant)
        versions.rollback(session, tenant.id, actor="alice", reason="regression")

    rows = ok_json(capsys, "versions", "acme")
    assert isinstance(rows, list)
    assert [(r["version"], r["status"], r["rolled_back"]) for r in rows] == [
        (2, "deprecated", True),
        (1, "production", False),
    ]
    assert rows[0]["rolled_back_at"] is not None and rows[1]["rolled_back_at"] is None

    code, out, _ = run(capsys, "versions", "acme")
    assert code == 0
    header, _, v2, v1 = out.splitlines()
    assert header.endswith("ROLLED BACK")
    assert v2.split()[-1] != "-" and v1.split()[-1] == "-"


def test_item7_tenant_list(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "tenant", "list") == (
        0,
        "no tenants yet (add one: ftdeploy tenant add SLUG)\n",
        "",
    )
    with unit_of_work(cli_db) as session:
        acme = make_tenant(session, "acme", require_evaluation=False)
        deploy_new(session, acme)
        make_tenant(session, "zeta", strategy="canary")
    assert run(capsys, "tenant", "pause", "zeta", "--reason", "incident 42")[0] == 0

    rows = ok_json(capsys, "tenant", "list")
    assert isinstance(rows, list)
    assert [(r["tenant"], r["strategy"], r["split"], r["paused"]) for r in rows] == [
        ("acme", "immediate", {"1": 100}, False),
        ("zeta", "canary", {}, True),
    ]
    code, out, _ = run(capsys, "tenant", "list")
    assert code == 0 and "v1:100%" in out and "paused: incident 42" in out


def test_item7_pause_holds_the_sweep_and_resume_lets_it_act(
    cli_db: str, capsys: pytest.CaptureFixture[str], clock: Clock
) -> None:
    sessions: sessionmaker[Session] = session_factory(cli_db)
    tenant_id, slug = canary_tenant(sessions)
    record(sessions, slug, 2, ok=60, failed=0, at=clock())
    record(sessions, slug, 1, ok=300, failed=3, at=clock())
    clock.advance(120)

    code, out, err = run(capsys, "tenant", "pause", slug, "--reason", "incident 42")
    assert (code, err) == (0, "") and "paused" in out
    assert run(capsys, "tenant", "pause", slug, "--reason", "again")[0] == 0  # idempotent

    status = ok_json(capsys, "status", slug)
    assert isinstance(status, list)
    [row] = status
    assert (row["paused"], row["next"]) == (True, "paused")
    assert "paused" in run(capsys, "status", slug)[1]

    report = auto_promote_sweep(sessions, clock())
    assert report.items == [] and split(sessions, tenant_id) == {1: 90, 2: 10}

    assert run(capsys, "tenant", "resume", slug, "--reason", "fixed")[0] == 0
    [item] = auto_promote_sweep(sessions, clock()).items
    assert item.applied and split(sessions, tenant_id) == {1: 75, 2: 25}

    audit = [r for r in _trail(capsys, slug) if r["kind"] == "audit"]
    assert [(r["action"], r["reason"]) for r in audit[:2]] == [
        ("resume", "fixed"),
        ("pause", "incident 42"),
    ]


def test_item7_pause_needs_a_reason(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    with unit_of_work(cli_db) as session:
        make_tenant(session, "acme")
    code, _, err = run(capsys, "tenant", "pause", "acme")
    assert code == 2 and "--reason" in err
