"""Issue 10, items 2, 4, 6, 8 and 9 — what a newcomer trips on: a database never migrated, the
settings in force, the fake OpenAI, exit statuses and --json errors, running the Procfile."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.schema import head_revisions
from registry.settings import get_settings
from tests import services
from tests.factories import make_tenant
from tests.worker.cli_support import ok_json, point_cli_at, run
from worker.cli import output
from worker.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


@pytest.fixture(params=["postgresql", "sqlite"])
def never_migrated(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The CLI pointed at an empty database nobody ran `ftdeploy db upgrade` on."""
    name = f"ftdeploy_never{os.getpid()}"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / name}.db"
    else:
        postgres: services.Service = request.getfixturevalue("postgres")
        services.drop_database(postgres.url, name)
        url = services.create_database(postgres.url, name)
    point_cli_at(monkeypatch, url, tmp_path / "data")
    yield url
    get_settings.cache_clear()
    if request.param == "postgresql":
        services.drop_database(request.getfixturevalue("postgres").url, name)


DATABASE_COMMANDS = [
    ["tenant", "list"],
    ["tenant", "add", "acme"],
    ["tenant", "policy", "acme"],
    ["tenant", "pause", "acme", "--reason", "x"],
    ["versions", "acme"],
    ["history", "acme"],
    ["activity", "acme"],
    ["resolve", "acme"],
    ["status"],
    ["events"],
    ["events", "retry"],
    ["job-finished", "ftjob-1"],
    ["evaluation", "record", "ftjob-1", "--recommendation", "approve"],
    ["promote", "acme", "1"],
    ["rollback", "acme"],
    ["outcome", "acme", "1", "--success"],
    ["keys", "list"],
]


def test_item2_never_migrated_database_every_command_says_run_db_upgrade(
    never_migrated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if never_migrated.startswith("sqlite"):
        # A SQLite file is the embedded database: the CLI creates its schema as needed.
        assert run(capsys, "tenant", "list")[0] == 0
        return
    for argv in DATABASE_COMMANDS:
        code, out, err = run(capsys, *argv)
        assert (code, out) == (2, ""), argv
        assert err.count("\n") == 1 and "run `ftdeploy db upgrade` first" in err, (argv, err)
        assert "does not exist" not in err and "no such table" not in err

    code, _, err = run(capsys, "tenant", "list", "--json")
    assert code == 2
    assert json.loads(err)["error"]["type"] == "SchemaNotCurrent"


def test_item2_only_setup_commands_skip_the_schema_check() -> None:
    skipped: set[str] = set()

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))
        if path and parser.get_default("database") is False:
            skipped.add(" ".join(path))

    walk(build_parser(), ())
    assert skipped == {
        "db upgrade",
        "config",
        "worker",
        "demo",
        "fake-openai",
        "webhooks serve",  # the servers and the worker check the schema themselves at start
        "serve",
    }


def test_item2_db_upgrade_says_what_it_applied(
    never_migrated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    head = ", ".join(head_revisions())
    code, out, err = run(capsys, "db", "upgrade")
    assert (code, err) == (0, "")
    assert out == f"database schema upgraded: empty (never migrated) -> {head}\n"
    assert run(capsys, "db", "upgrade")[1] == f"database schema already at head ({head})\n"
    assert run(capsys, "tenant", "list")[0] == 0


def test_item4_config_shows_effective_settings_with_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    point_cli_at(monkeypatch, "postgresql://ops:hunter2@db.example:5432/ftdeploy", tmp_path)
    monkeypatch.setenv("FTDEPLOY_WEBHOOK_SECRET", "whsec_c2VjcmV0LXZhbHVl")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdef")
    monkeypatch.setenv("FTDEPLOY_SWEEP_SECONDS", "17")
    try:
        shown = ok_json(capsys, "config")
        code, text, err = run(capsys, "config")
    finally:
        get_settings.cache_clear()
    assert isinstance(shown, dict)
    assert shown["FTDEPLOY_SWEEP_SECONDS"] == 17.0
    assert shown["FTDEPLOY_WEBHOOK_SECRET"] == "***" and shown["OPENAI_API_KEY"] == "***"
    assert "hunter2" not in shown["FTDEPLOY_DATABASE_URL"]
    assert "db.example" in shown["FTDEPLOY_DATABASE_URL"]
    assert (code, err) == (0, "")
    assert re.search(r"^FTDEPLOY_SWEEP_SECONDS\s+17\.0$", text, re.M)
    for secret in ("hunter2", "c2VjcmV0", "sk-live"):
        assert secret not in text and secret not in json.dumps(shown)


def test_item6_fake_openai_is_a_documented_command(tmp_path: Path) -> None:
    env = {**os.environ, "FTDEPLOY_DATA_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "fake-openai", "--job", "ftjob-try:acme"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        base_url = first.rsplit(" ", 1)[-1].strip()
        assert first.startswith("fake OpenAI listening on http://127.0.0.1:")
        assert process.stdout.readline().startswith("point ftdeploy")
        assert process.stdout.readline().strip() == f"export OPENAI_BASE_URL={base_url}"
        request = urllib.request.Request(
            f"{base_url}/fine_tuning/jobs/ftjob-try", headers={"Authorization": "Bearer sk-x"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            job = json.load(answer)
        assert (job["status"], job["metadata"]) == ("succeeded", {"tenant": "acme"})
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert "ftdeploy fake-openai" in README and "OPENAI_BASE_URL" in README
    assert "--no-require-evaluation" in README


def test_item8_exit_codes_are_one_table_in_help_and_readme(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for status, meaning in output.EXIT_CODES:
        assert f"  {status:<3} {meaning}" in out
        assert f"| {status} | {meaning} |" in README, status


def test_item8_resolve_without_a_model_json(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from registry.db import unit_of_work

    with unit_of_work(cli_db) as session:
        make_tenant(session, "idle")
    code, out, err = run(capsys, "resolve", "idle", "--json")
    assert (code, err) == (output.NO_MODEL, "")
    answer = json.loads(out)
    assert (answer["tenant"], answer["model"], answer["reason"]) == ("idle", None, "no_model")
    code, out, err = run(capsys, "resolve", "idle")
    assert (code, out) == (4, "") and "no version in production" in err


def test_item8_json_errors_are_one_line_of_json_on_stderr(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, status, kind in (
        (["versions", "nobody"], 3, "TenantNotFound"),
        (["tenant", "add", "Bad Slug"], 2, "InvalidInput"),
        (["promote", "acme", "1", "--traffic", "lots"], 2, "UsageError"),
        (["history", "acme", "--limit", "0"], 2, "InvalidInput"),
    ):
        code, out, err = run(capsys, *argv, "--json")
        assert (code, out) == (status, ""), argv
        assert err.count("\n") == 1 and "Traceback" not in err
        problem = json.loads(err)["error"]
        assert (problem["type"], problem["exit_code"]) == (kind, status)
        assert problem["message"]


def test_item9_readme_says_how_to_run_the_procfile() -> None:
    procfile = (ROOT / "Procfile").read_text()
    assert re.search(r"^release:", procfile, re.M)
    assert "honcho start worker beat web" in README
    assert "honcho run ftdeploy db upgrade" in README
