"""The Procfile as a platform runs it: `release` migrates an empty PostgreSQL database, then `web`,
`worker` and `beat` start from a fresh directory with only environment variables, and an event
goes through (one sent by the CLI, one found by beat's reconciler)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.db import session_factory, unit_of_work
from registry.jobs import events
from registry.versions import list_versions
from tests import services
from tests.harness import REPO, fresh_broker_url, reset_settings, wait_for, worker_env
from tests.server_process import free_port
from tests.worker.webhook_signing import new_secret
from worker import cli
from worker.demo.fake_openai import FakeOpenAI

pytestmark = pytest.mark.e2e


def procfile() -> dict[str, str]:
    entries = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


@pytest.fixture
def empty_database(postgres: services.Service) -> Iterator[str]:
    name = f"ftdeploy_procfile_{os.getpid()}"
    services.drop_database(postgres.url, name)
    url = services.create_database(postgres.url, name)  # no schema: `release` makes it
    yield url
    bind = session_factory(url).kw.get("bind")
    if bind is not None:
        bind.dispose()
    services.drop_database(postgres.url, name)


def test_procfile_release_web_worker_and_beat(
    empty_database: str,
    redis_service: services.Service,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries = procfile()
    assert set(entries) == {"release", "web", "worker", "beat"}
    port = free_port()
    env = worker_env(
        database_url=empty_database,
        broker_url=fresh_broker_url(redis_service.url),
        openai_base_url=fake_openai.base_url,
        data_dir=tmp_path / "data",  # does not exist yet: as on a fresh dyno
        webhook_secret=new_secret(),
        reconcile_grace_seconds=0,
    )
    env.update(PORT=str(port), PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    app_dir = tmp_path / "app"
    app_dir.mkdir()

    release = subprocess.run(
        ["bash", "-c", entries["release"]], cwd=app_dir, env=env, capture_output=True, timeout=120
    )
    assert release.returncode == 0, release.stdout + release.stderr

    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("web", "worker", "beat"):
            with (tmp_path / f"{name}.log").open("ab") as log:
                started[name] = subprocess.Popen(
                    ["bash", "-c", f"exec {entries[name]}"],
                    cwd=app_dir,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

        def logs() -> str:
            return "\n".join(
                f"--- {n} ---\n" + (tmp_path / f"{n}.log").read_text(errors="replace")[-3000:]
                for n in started
            )

        def up(name: str, marker: bytes) -> bool:
            assert started[name].poll() is None, f"{name} exited\n{logs()}"
            return marker in (tmp_path / f"{name}.log").read_bytes()

        def healthy() -> bool:
            assert started["web"].poll() is None, f"web exited\n{logs()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_for(lambda: up("worker", b" ready."), 60, f"worker not ready\n{logs()}")
        wait_for(lambda: up("beat", b"beat: Starting"), 60, f"beat not started\n{logs()}")
        wait_for(healthy, 60, f"web not healthy\n{logs()}")

        for key in list(os.environ):
            if key.startswith(("FTDEPLOY_", "OPENAI_")):
                monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith(("FTDEPLOY_", "OPENAI_")):
                monkeypatch.setenv(key, value)
        reset_settings()

        def serving() -> dict[int, int]:
            with unit_of_work() as session:
                rows = list_versions(session, "paas")
                return {v.version: v.traffic_percent for v in rows if v.status == "production"}

        assert cli.main(["tenant", "add", "paas", "--no-require-evaluation"]) == 0
        fake_openai.add_job("ftjob-paas-1", statuses=("succeeded",), tenant="paas")
        assert cli.main(["job-finished", "ftjob-paas-1"]) == 0
        wait_for(lambda: serving() == {1: 100}, 30, f"v1 not deployed\n{logs()}")

        # Accepted but never sent (as if the sender died): beat's reconciler sends it.
        fake_openai.add_job("ftjob-paas-2", statuses=("succeeded",), tenant="paas")
        with unit_of_work() as session:
            events.accept_event(session, "ftjob-paas-2", None, "test")
        wait_for(lambda: serving() == {2: 100}, 30, f"v2 not deployed\n{logs()}")
    finally:
        for process in started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in started.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        reset_settings()
