"""Running `ftdeploy` in-process against a test database: exit code, stdout and stderr."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.settings import get_settings
from worker.cli import main


def point_cli_at(monkeypatch: pytest.MonkeyPatch, url: str, data_dir: Path) -> None:
    monkeypatch.setenv("FTDEPLOY_DATABASE_URL", url)
    monkeypatch.setenv("FTDEPLOY_DATA_DIR", str(data_dir))
    get_settings.cache_clear()


@pytest.fixture
def cli_db(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    point_cli_at(monkeypatch, db_url, tmp_path / "data")
    yield db_url
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `ftdeploy argv`; argparse's own refusals exit too."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ok_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code, out, err = run(capsys, *argv, "--json")
    assert (code, err) == (0, "")
    return json.loads(out)
