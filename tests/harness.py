"""Real processes for end-to-end tests, each in its own process group and pointed at the test's
PostgreSQL, Redis and fake OpenAI through the environment: a Celery worker (optionally with
beat), and an `ftdeploy` command serving HTTP (the API, the webhook receiver)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from tests.server_process import HOST, free_port

_redis_db = itertools.count(1)
REPO = Path(__file__).resolve().parents[1]
FTDEPLOY = Path(sys.executable).with_name("ftdeploy")


def fresh_broker_url(redis_url: str) -> str:
    """A Redis database of its own for one test (0 is left alone), flushed."""
    base = redis_url.rsplit("/", 1)[0]
    url = f"{base}/{next(_redis_db) % 15 + 1}"
    redis.Redis.from_url(url).flushdb()
    return url


def worker_env(
    *,
    database_url: str,
    broker_url: str,
    openai_base_url: str,
    data_dir: Path,
    **settings: Any,
) -> dict[str, str]:
    """The environment a worker process gets: only through it, as in production."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTDEPLOY_", "OPENAI_"))}
    env.update(
        FTDEPLOY_DATABASE_URL=database_url,
        FTDEPLOY_BROKER_URL=broker_url,
        FTDEPLOY_DATA_DIR=str(data_dir),
        FTDEPLOY_JOB_POLL_SECONDS="0.2",
        FTDEPLOY_JOB_POLL_MAX_SECONDS="2",
        FTDEPLOY_VISIBILITY_TIMEOUT_SECONDS="30",
        FTDEPLOY_TASK_TIME_LIMIT_SECONDS="20",
        FTDEPLOY_SWEEP_SECONDS="1",
        FTDEPLOY_RECONCILE_SECONDS="1",
        OPENAI_BASE_URL=openai_base_url,
        OPENAI_API_KEY="sk-test-not-a-real-key",
        PYTHONUNBUFFERED="1",
    )
    env.update({f"FTDEPLOY_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class ProcessGroup:
    """A child process in a process group of its own (so its children go with it), logging to
    a file: stopped by SIGTERM to the group, SIGKILL when that takes too long."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: Sequence[str], preexec_fn: Callable[[], None] | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(argv),
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec_fn,
            )

    def log(self) -> str:
        """The end of the log (its last 6,000 characters)."""
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown, no pending work finished."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class HttpServer(ProcessGroup):
    """`ftdeploy <command> --host 127.0.0.1 --port N` (`serve`, `webhooks serve`) on a free
    loopback port; `start()` returns once `/healthz` answers 200."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.command = tuple(command)
        self.env = dict(env)
        self.log_path = log_path
        self.preexec_fn = preexec_fn
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 30.0) -> HttpServer:
        argv = [str(FTDEPLOY), *self.command, "--host", HOST, "--port", str(self.port)]
        self._spawn(argv, self.preexec_fn)
        name = " ".join(self.command)

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{name} exited; log:\n{self.log()}")
            try:
                return httpx2.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx2.HTTPError:
                return False

        try:
            wait_for(healthy, timeout, f"{name} did not become healthy; log:\n{self.log()}")
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerProcess(ProcessGroup):
    """`celery -A worker.app worker` in its own process group, logging to a file."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        concurrency: int = 2,
        beat: bool = False,
        name: str = "w1",
        extra_args: tuple[str, ...] = (),
        app: str = "worker.app",
    ) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.concurrency = concurrency
        self.beat = beat
        self.name = name
        self.extra_args = extra_args
        self.app = app  # the Celery app module (`-A`); the benchmarks' no-op app, say

    def start(self, timeout: float = 30.0) -> WorkerProcess:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app,
            "worker",
            f"--concurrency={self.concurrency}",
            "--loglevel=INFO",
            "--pool=prefork",
            "--without-mingle",
            "--without-gossip",
            "-n",
            f"{self.name}@%h",
            *self.extra_args,
        ]
        if self.beat:
            argv += ["-B", f"--schedule={self.log_path.with_suffix('.schedule')}"]
        self._spawn(argv)
        wait_for(
            lambda: b" ready." in self.log_path.read_bytes(),
            timeout,
            f"worker {self.name} did not start; log:\n{self.log()}",
        )
        return self

    def pool_pids(self) -> list[int]:
        """The prefork pool's child processes (they run the tasks)."""
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(
    condition: Callable[[], Any], timeout: float = 30.0, message: str = "timed out"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)


@contextmanager
def running_worker(
    env: Mapping[str, str], tmp_path: Path, **options: Any
) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(env, tmp_path / f"{options.get('name', 'w1')}.log", **options)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def reset_settings() -> None:
    """Settings and the Celery app are read once per process: make them see this test's env."""
    from registry.settings import get_settings
    from worker import app as app_module

    get_settings.cache_clear()
    fresh = app_module.make_app()
    app_module.app.conf.update(
        broker_url=fresh.conf.broker_url,
        broker_transport_options=fresh.conf.broker_transport_options,
    )
    # Drop cached connections to the previous test's broker; new ones use the new URL.
    app_module.app._pool = None
    app_module.app.amqp._producer_pool = None


def use_env(env: Mapping[str, str], patch: pytest.MonkeyPatch) -> None:
    """Point this test process at the same settings as the worker's `env`: the CLI, the task
    senders and the registry read them from the environment, as in production."""
    for key in list(os.environ):
        if key.startswith(("FTDEPLOY_", "OPENAI_")) and key not in env:
            patch.delenv(key)
    for key, value in env.items():
        if key.startswith(("FTDEPLOY_", "OPENAI_")):
            patch.setenv(key, value)
    reset_settings()
