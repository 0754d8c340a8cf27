"""Running `ftdeploy` in-process against a test database: exit code, stdout and stderr."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registry.settings import get_settings
from tests import services
from tests.harness import fresh_broker_url, reset_settings
from tests.server_process import free_port
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


@pytest.fixture
def broker_down(
    pg_url: str,
    redis_service: services.Service,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Callable[[], str]]:
    """The CLI on PostgreSQL with its broker down (nothing listens on its port). Yields a
    function that brings a broker back (an empty Redis database of its own) and returns its URL."""
    monkeypatch.setenv("FTDEPLOY_DATABASE_URL", pg_url)
    monkeypatch.setenv("FTDEPLOY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FTDEPLOY_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_settings()

    def bring_back() -> str:
        broker = fresh_broker_url(redis_service.url)
        monkeypatch.setenv("FTDEPLOY_BROKER_URL", broker)
        reset_settings()
        return broker

    try:
        yield bring_back
    finally:
        reset_settings()


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
