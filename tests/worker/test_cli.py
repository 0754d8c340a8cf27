"""The `ftdeploy` command without a worker: tenants and policies, versions, history, resolve,
evaluations; and bad input, which gets a specific exit code, one line on stderr, no traceback,
and leaves the database as it was.

`promote` and `rollback` are queued for a worker; here only their refusals, which happen before
anything is queued, are exercised (the worker tests run them for real).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from registry import versions
from registry.db import unit_of_work
from registry.models import Evaluation
from registry.settings import get_settings
from registry.tenants import find_tenant, get_policy
from tests.dbdump import diff, dump
from tests.factories import deploy_new, make_run, make_tenant
from tests.registry.world import World, module_world
from tests.worker.cli_support import ok_json, point_cli_at, run

VERSION_KEYS = {
    "version",
    "name",
    "model_id",
    "status",
    "traffic_percent",
    "run_id",
    "metrics",
    "created_at",
    "deployed_at",
    "rolled_back",
    "rolled_back_at",
}


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    yield from module_world(request, tmp_path_factory)


@pytest.fixture
def cli_world(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[World]:
    point_cli_at(monkeypatch, world.url, tmp_path / "data")
    yield world
    get_settings.cache_clear()


# ------------------------------------------------------------------------------ happy paths


def test_tenant_add_and_policy(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    added = ok_json(
        capsys, "tenant", "add", "acme", "--strategy", "canary", "--canary-percent", "20"
    )
    assert isinstance(added, dict)
    assert (added["tenant"], added["strategy"], added["canary_percent"]) == ("acme", "canary", 20)
    assert added["require_evaluation"] is True

    changed = ok_json(
        capsys,
        "tenant",
        "policy",
        "acme",
        "--auto-promote",
        "--threshold",
        "0.9",
        "--min-samples",
        "50",
        "--bake-seconds",
        "60",
        "--no-require-evaluation",
    )
    assert isinstance(changed, dict)
    assert {k: changed[k] for k in ("strategy", "canary_percent", "auto_promote", "threshold")} == {
        "strategy": "canary",
        "canary_percent": 20,
        "auto_promote": True,
        "threshold": 0.9,
    }
    assert (changed["min_samples"], changed["bake_seconds"]) == (50, 60)
    assert changed["require_evaluation"] is False

    # Without options it shows the policy; by id as well as by slug; readable text without --json.
    assert ok_json(capsys, "tenant", "policy", "acme") == changed
    assert ok_json(capsys, "tenant", "policy", changed["tenant_id"]) == changed
    code, out, err = run(capsys, "tenant", "policy", "acme", "--strategy", "blue_green")
    assert (code, err) == (0, "")
    assert "blue_green" in out and "strategy" in out

    with unit_of_work(cli_db) as session:
        policy = get_policy(session, find_tenant(session, "acme").id)
        assert (policy.strategy, policy.canary_percent, policy.min_samples) == (
            "blue_green",
            20,
            50,
        )


def test_versions_json_and_table(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    with unit_of_work(cli_db) as session:
        tenant = make_tenant(session, "acme", strategy="canary", canary_percent=20)
        deploy_new(session, tenant)
        deploy_new(session, tenant)
        expected = {v.version: v for v in versions.list_versions(session, tenant.id)}

    rows = ok_json(capsys, "versions", "acme")
    assert isinstance(rows, list)
    assert [set(row) for row in rows] == [VERSION_KEYS, VERSION_KEYS]
    assert [row["version"] for row in rows] == [2, 1]  # newest first
    for row in rows:
        version = expected[row["version"]]
        assert row["name"] == f"v{row['version']}"
        assert row["model_id"] == version.model_id
        assert row["run_id"] == str(version.run_id)
        assert row["metrics"] == version.metrics == {"accuracy": 0.9}
        assert datetime.fromisoformat(row["created_at"]) == version.created_at
        assert datetime.fromisoformat(row["deployed_at"]) == version.deployed_at
    assert [(r["status"], r["traffic_percent"]) for r in rows] == [
        ("production", 20),
        ("production", 80),
    ]

    code, out, err = run(capsys, "versions", "acme")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "VERSION",
        "STATUS",
        "TRAFFIC",
        "MODEL",
        "DEPLOYED",
        "ROLLED",
        "BACK",
    ]
    assert lines[2].split()[:3] == ["v2", "production", "20%"]
    assert lines[3].split()[:3] == ["v1", "production", "80%"]


def test_versions_of_a_tenant_without_any(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "tenant", "add", "fresh")[0] == 0
    assert ok_json(capsys, "versions", "fresh") == []
    assert run(capsys, "versions", "fresh") == (0, "no versions yet\n", "")


def test_history(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    with unit_of_work(cli_db) as session:
        tenant = make_tenant(session, "acme", strategy="canary", canary_percent=20)
        deploy_new(session, tenant)
        deploy_new(session, tenant)
        versions.promote(session, tenant.slug, 2, 100, actor="alice", reason="looks good")

    trail = ok_json(capsys, "history", "acme")
    assert isinstance(trail, list)
    events = [e for e in trail if e["kind"] == "traffic"]
    assert [(e["action"], e["version"], e["before"], e["after"]) for e in events] == [
        ("promote", 2, {"1": 80, "2": 20}, {"2": 100}),
        ("deploy", 2, {"1": 100}, {"1": 80, "2": 20}),
        ("deploy", 1, {}, {"1": 100}),
    ]
    assert (events[0]["actor"], events[0]["reason"]) == ("alice", "looks good")
    keys = {"kind", "at", "action", "version", "actor", "reason", "before", "after"}
    assert all(set(e) == keys for e in trail)

    assert len(ok_json(capsys, "history", "acme", "--limit", "1")) == 1  # type: ignore[arg-type]
    code, out, err = run(capsys, "history", "acme")
    assert (code, err) == (0, "")
    assert "v1:80% v2:20%" in out and "v2:100%" in out and "alice" in out


def test_resolve(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    with unit_of_work(cli_db) as session:
        tenant = make_tenant(session, "acme", strategy="canary", canary_percent=30)
        deploy_new(session, tenant)
        deploy_new(session, tenant)
        serving = {v.model_id for v in versions.list_versions(session, tenant.id)}
        make_tenant(session, "idle")

    picked = {}
    for subject in ("user-1", "user-2", "user-3", "user-4", "user-5", "user-6"):
        answer = ok_json(capsys, "resolve", "acme", "--subject", subject)
        assert isinstance(answer, dict)
        assert (answer["tenant"], answer["subject"]) == ("acme", subject)
        assert answer["model_id"] in serving
        picked[subject] = answer["model_id"]
        # Sticky: the same subject, asked again (a new process would build the same snapshot).
        code, out, err = run(capsys, "resolve", "acme", "--subject", subject)
        assert (code, out, err) == (0, f"{picked[subject]}\n", "")

    code, out, err = run(capsys, "resolve", "acme")
    assert code == 0 and out.strip() in serving

    code, out, err = run(capsys, "resolve", "idle")
    assert code == 4 and out == ""
    assert err.count("\n") == 1 and "no version in production" in err


def test_evaluation_record(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    with unit_of_work(cli_db) as session:
        tenant = make_tenant(session, "acme")
        job_id = make_run(session, tenant).openai_job_id

    recorded = ok_json(
        capsys,
        "evaluation",
        "record",
        job_id,
        "--recommendation",
        "review",
        "--metric",
        "accuracy=0.93",
        "--metric",
        "loss = 0.2",
        "--no-resume",
    )
    assert isinstance(recorded, dict)
    assert (recorded["job_id"], recorded["recommendation"]) == (job_id, "review")
    assert recorded["metrics"] == {"accuracy": 0.93, "loss": 0.2}

    code, out, err = run(
        capsys, "evaluation", "record", job_id, "--recommendation", "approve", "--no-resume"
    )
    assert (code, out, err) == (0, f"recorded approve for {job_id}\n", "")

    with unit_of_work(cli_db) as session:
        rows = session.scalars(select(Evaluation).order_by(Evaluation.created_at)).all()
        first = rows[0]
        assert (str(first.id), first.recommendation, first.metrics) == (
            recorded["evaluation_id"],
            "review",
            {"accuracy": 0.93, "loss": 0.2},
        )
        assert [r.recommendation for r in rows] == ["review", "approve"]


# ------------------------------------------------------------------------------- bad input

REC = "--recommendation"
BAD_INPUT: list[tuple[str, list[str], int, str]] = [
    # (id, argv, exit code, a fragment of the one error line)
    ("versions-unknown-tenant", ["versions", "nobody"], 3, "tenant not found: 'nobody'"),
    ("versions-bad-slug", ["versions", "Bad Slug"], 2, "invalid tenant slug"),
    ("history-unknown-tenant", ["history", "nobody"], 3, "tenant not found"),
    ("history-negative-limit", ["history", "alpha", "--limit", "-1"], 2, "invalid limit: -1"),
    (
        "tenant-add-bad-percent",
        ["tenant", "add", "newco", "--canary-percent", "0"],
        2,
        "outside 1..99",
    ),
    ("resolve-unknown-tenant", ["resolve", "nobody", "--subject", "u1"], 3, "tenant not found"),
    ("tenant-add-bad-slug", ["tenant", "add", "Bad Slug"], 2, "invalid tenant slug"),
    ("tenant-add-existing", ["tenant", "add", "alpha"], 1, "tenant already exists: 'alpha'"),
    (
        "policy-unknown-tenant",
        ["tenant", "policy", "nobody", "--strategy", "canary"],
        3,
        "not found",
    ),
    (
        "policy-unknown-strategy",
        ["tenant", "policy", "alpha", "--strategy", "rolling"],
        2,
        "invalid choice: 'rolling'",
    ),
    *[
        (
            f"policy-canary-percent-{value}",
            ["tenant", "policy", "alpha", "--canary-percent", value],
            2,
            fragment,
        )
        for value, fragment in (
            ("0", "invalid canary percent: 0 is outside 1..99"),
            ("100", "outside 1..99"),
            ("101", "outside 1..99"),
            ("-1", "outside 1..99"),
            ("12.5", "invalid int value: '12.5'"),
            ("ten", "invalid int value: 'ten'"),
        )
    ],
    (
        "policy-threshold",
        ["tenant", "policy", "alpha", "--auto-promote", "--threshold", "1.5"],
        2,
        "invalid threshold",
    ),
    ("policy-steps", ["tenant", "policy", "alpha", "--steps", "50,25"], 2, "invalid steps"),
    (
        "policy-percent-disagrees-with-steps",
        ["tenant", "policy", "alpha", "--canary-percent", "30"],
        2,
        "disagrees with the canary steps [20, 50, 100]",
    ),
    (
        "policy-bake-outlasts-deadline",
        ["tenant", "policy", "alpha", "--bake-seconds", "100000"],
        2,
        "must exceed bake seconds (100000)",
    ),
    (
        "policy-min-samples",
        ["tenant", "policy", "alpha", "--min-samples", "0"],
        2,
        "invalid min samples",
    ),
    (
        "evaluation-unknown-job",
        ["evaluation", "record", "ftjob-missing", REC, "approve", "--no-resume"],
        3,
        "no fine-tuning run for 'ftjob-missing'",
    ),
    (
        "evaluation-bad-recommendation",
        ["evaluation", "record", "JOB", REC, "maybe", "--no-resume"],
        2,
        "invalid choice: 'maybe'",
    ),
    *[
        (
            f"evaluation-metric-{pair}",
            ["evaluation", "record", "JOB", REC, "approve", "--metric", pair, "--no-resume"],
            2,
            fragment,
        )
        for pair, fragment in (
            ("accuracy", "invalid metric: 'accuracy' is not of the form name=value"),
            ("accuracy=high", "invalid metric value"),
            ("=1", "invalid metric name"),
            ("acc=nan", "not a finite number"),
        )
    ],
    # promote and rollback refuse before anything is queued: no broker needed
    ("promote-unknown-tenant", ["promote", "nobody", "1"], 3, "tenant not found"),
    ("promote-unknown-version", ["promote", "alpha", "99"], 3, "tenant 'alpha' has no version 99"),
    (
        "promote-other-tenants-version",
        ["promote", "beta", "3"],
        3,
        "tenant 'beta' has no version 3",
    ),
    ("promote-bad-version", ["promote", "alpha", "abc"], 2, "invalid version"),
    *[
        (f"promote-traffic-{value}", ["promote", "alpha", "2", "--traffic", value], 2, fragment)
        for value, fragment in (
            ("101", "invalid traffic percent: 101 is outside 1..100"),
            ("0", "outside 1..100"),
            ("-1", "outside 1..100"),
            ("12.5", "invalid int value: '12.5'"),
        )
    ],
    ("rollback-unknown-tenant", ["rollback", "nobody"], 3, "tenant not found"),
]


@pytest.mark.parametrize(
    ("argv", "code", "fragment"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_exits_non_zero_with_one_line_and_changes_nothing(
    cli_world: World,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    fragment: str,
) -> None:
    argv = [cli_world.alpha_job if arg == "JOB" else arg for arg in argv]
    before = dump(cli_world.url)

    got, out, err = run(capsys, *argv)

    assert got == code, err
    assert "Traceback" not in err and "Traceback" not in out
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert fragment in errors[0]
    if not errors[0].startswith("usage:") and "error: argument" not in errors[0]:
        assert err.count("\n") == 1  # our own errors: exactly one line
    assert diff(before, dump(cli_world.url)) == {}
