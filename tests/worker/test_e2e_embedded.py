"""The embedded default, end to end: `ftdeploy worker` (worker + beat) with nothing but a data
directory, on SQLite and the filesystem broker, and `ftdeploy demo` as a new user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.db import unit_of_work
from registry.jobs import events
from registry.versions import list_versions
from tests.harness import reset_settings, wait_for
from worker import cli
from worker.demo.fake_openai import FakeOpenAI

pytestmark = pytest.mark.e2e

FTDEPLOY = Path(sys.executable).with_name("ftdeploy")  # the console script of this virtualenv


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ftdeploy or OpenAI setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTDEPLOY_", "OPENAI_"))}
    env.update(extra, PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def embedded(
    tmp_path: Path, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """`ftdeploy worker` on a fresh data directory (no database or broker URL), and this process
    pointed at the same directory."""
    data_dir = tmp_path / "data"
    env = clean_env(
        FTDEPLOY_DATA_DIR=str(data_dir),
        FTDEPLOY_JOB_POLL_SECONDS="0.2",
        FTDEPLOY_JOB_POLL_MAX_SECONDS="2",
        FTDEPLOY_RECONCILE_SECONDS="1",
        FTDEPLOY_RECONCILE_GRACE_SECONDS="0",
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY="sk-test-not-a-real-key",
    )
    for key in list(os.environ):
        if key.startswith(("FTDEPLOY_", "OPENAI_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(("FTDEPLOY_", "OPENAI_")):
            monkeypatch.setenv(key, value)
    reset_settings()
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [str(FTDEPLOY), "worker", "--concurrency", "2"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: b" ready." in log.read_bytes() or worker.poll() is not None, 60)
        assert worker.poll() is None, log.read_text(errors="replace")
        yield data_dir, worker
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # its pool and beat too; nothing to keep
        worker.wait(10)
        reset_settings()


def test_embedded_worker_and_beat_handle_events(
    embedded: tuple[Path, subprocess.Popen[bytes]], fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    data_dir, _ = embedded
    # The worker created the schema at start: a new user needs no `db upgrade`.
    assert (data_dir / "ftdeploy.db").is_file()
    assert cli.main(["tenant", "add", "local", "--no-require-evaluation"]) == 0

    def serving() -> dict[int, int]:
        with unit_of_work() as session:
            return {
                v.version: v.traffic_percent
                for v in list_versions(session, "local")
                if v.status == "production"
            }

    log = tmp_path / "worker.log"
    # Through the CLI: this process publishes into the broker folder, the worker consumes.
    fake_openai.add_job("ftjob-local-1", statuses=("running", "succeeded"), tenant="local")
    assert cli.main(["job-finished", "ftjob-local-1"]) == 0
    wait_for(lambda: serving() == {1: 100}, 30, f"v1 not deployed; log:\n{log.read_text()}")

    # Through beat: an event accepted but never sent (a crash between the commit and the send)
    # is found by the reconciler that beat runs, and handled.
    fake_openai.add_job("ftjob-local-2", statuses=("succeeded",), tenant="local")
    with unit_of_work() as session:
        events.accept_event(session, "ftjob-local-2", None, "test")
    wait_for(lambda: serving() == {2: 100}, 30, f"v2 not deployed; log:\n{log.read_text()}")
    assert fake_openai.requests("ftjob-local-2") >= 1


def test_demo_runs_from_a_fresh_directory_and_exits_0(tmp_path: Path) -> None:
    # A database URL the demo must not touch: it runs on its own embedded defaults.
    env = clean_env(FTDEPLOY_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/nowhere")
    done = subprocess.run(
        [str(FTDEPLOY), "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr[-3000:]}"
    for line in (
        "acme: v1 100%",
        "acme: v1 80% · v2 20%",
        "promote succeeded",
        "acme: v2 80% · v3 20%",
        "rollback succeeded",
        "globex: no version serving",
        "globex: v1 100%",
        "job failed",
        "deployment rejected",
        "every step as expected",
    ):
        assert line in out, f"{line!r} missing from:\n{out}"
    assert out.index("acme: v1 100%") < out.index("acme: v1 80% · v2 20%")
    # It cleaned up after itself and wrote nothing where it was run.
    demo_dir = re.search(r"broker in (\S+),", out)
    assert demo_dir is not None and not Path(demo_dir.group(1)).exists()
    assert list(tmp_path.iterdir()) == []
