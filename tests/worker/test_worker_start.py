"""The worker's doors refuse, in one line each and without a traceback, to start where they
could not work: unusable settings, a database not migrated, no OpenAI API key."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests import services
from tests.harness import REPO, running_worker, worker_env

pytestmark = pytest.mark.e2e

FTDEPLOY = Path(sys.executable).with_name("ftdeploy")
CELERY = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool=solo"]
SECRET_PASSWORD = "hunter2-p@ss"
WEBHOOK_SECRET = "whsec_c2VjcmV0LXZhbHVlLWZvci10ZXN0cw=="


def _run(
    argv: list[str], env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=REPO, env=dict(env), capture_output=True, text=True, timeout=timeout
    )


def _env(
    tmp_path: Path, database_url: str, broker_url: str, **changes: str | None
) -> dict[str, str]:
    env = worker_env(
        database_url=database_url,
        broker_url=broker_url,
        openai_base_url="http://127.0.0.1:9/v1",
        data_dir=tmp_path / "data",
    )
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.fixture
def empty_pg(postgres: services.Service) -> Iterator[str]:
    name = f"ftdeploy_nomig{os.getpid()}"
    services.drop_database(postgres.url, name)
    yield services.create_database(postgres.url, name)
    services.drop_database(postgres.url, name)


def test_worker_and_cli_print_settings_errors_as_lines_without_values(
    tmp_path: Path, pg_url: str, broker_url: str
) -> None:
    real = pg_url.replace("postgres@", f"postgres:{SECRET_PASSWORD}@")
    env = _env(
        tmp_path,
        real,
        broker_url,
        FTDEPLOY_WEBHOOK_SECRET=WEBHOOK_SECRET,
        FTDEPLOY_SWEEP_SECONDS="-1",
        FTDEPLOY_JOB_POLL_SECONDS="soon",
    )
    for argv in (CELERY, [str(FTDEPLOY), "versions", "acme"], [str(FTDEPLOY), "webhooks", "serve"]):
        done = _run(argv, env)
        assert done.returncode == 2, (argv, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert lines == [
            "error: invalid setting FTDEPLOY_SWEEP_SECONDS: Input should be greater than 0",
            "invalid setting FTDEPLOY_JOB_POLL_SECONDS: Input should be a valid number, "
            "unable to parse string as a number",
        ] or lines == [
            "error: invalid setting FTDEPLOY_SWEEP_SECONDS: Input should be greater than 0",
            "error: invalid setting FTDEPLOY_JOB_POLL_SECONDS: Input should be a valid number, "
            "unable to parse string as a number",
        ], (argv, done.stderr)
        for leak in ("Traceback", "hunter2", "c2VjcmV0", "input_value", "soon"):
            assert leak not in done.stderr + done.stdout, (argv, leak)


def test_worker_refuses_to_start_on_a_database_not_migrated(
    tmp_path: Path, empty_pg: str, broker_url: str
) -> None:
    done = _run(CELERY, _env(tmp_path, empty_pg, broker_url))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: the database schema is not current" in done.stderr
    assert "run `ftdeploy db upgrade` first" in done.stderr
    assert "Traceback" not in done.stderr and " ready." not in done.stderr + done.stdout
    # The receiver refuses too.
    env = _env(tmp_path, empty_pg, broker_url, FTDEPLOY_WEBHOOK_SECRET=WEBHOOK_SECRET)
    served = _run([str(FTDEPLOY), "webhooks", "serve", "--port", "0"], env)
    assert served.returncode == 2 and "ftdeploy db upgrade" in served.stderr, served.stderr


def test_worker_refuses_to_start_without_an_openai_api_key(
    tmp_path: Path, pg_url: str, broker_url: str
) -> None:
    env = _env(
        tmp_path,
        pg_url,
        broker_url,
        OPENAI_API_KEY=None,
        OPENAI_BASE_URL="https://api.openai.com/v1",
    )
    done = _run(CELERY, env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: OPENAI_API_KEY is not set")
    assert "Traceback" not in done.stderr
    # Against a local fake OpenAI a missing key is only a warning.
    env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"
    with running_worker(env, tmp_path, name="nokey") as worker:
        pass
    assert "worker.start_warning" in worker.log() and "OPENAI_API_KEY" in worker.log()
