"""What every benchmark shares: its result row, and the servers it measures against.

A benchmark module `bench/bench_*.py` exposes `run(env: BenchEnv) -> list[Row]`. Each row puts
ftdeploy's figure next to a baseline measured in the same run on the same machine, so the ratio
means something on a noisy machine where absolute numbers do not.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2

REPO = Path(__file__).resolve().parents[1]
FTDEPLOY = Path(sys.executable).with_name("ftdeploy")


@dataclass(frozen=True)
class Row:
    name: str  # what is measured, e.g. "resolve, no subject"
    ours: float  # ftdeploy's figure
    baseline: float  # the baseline's figure, same unit, same run
    unit: str  # e.g. "calls/s", "µs p50", "statements", "MiB"
    baseline_name: str  # what the baseline is, e.g. "seed: one SQL query per call"
    higher_is_better: bool = True
    goal: str = ""  # e.g. ">= 100x"; empty when the row only informs
    met: bool | None = None  # whether the goal was met; None without a goal
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.ours / self.baseline if self.baseline else float("inf")
        return self.baseline / self.ours if self.ours else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class BenchEnv:
    """Servers shared by the benchmarks of one run (started by bench/__main__.py)."""

    postgres_url: str  # admin URL of a throwaway PostgreSQL server
    redis_url: str  # a throwaway Redis server
    quick: bool = False  # smaller sizes, for a smoke run in CI


def fresh_database(env: BenchEnv, name: str) -> str:
    """A new database `name` on the run's PostgreSQL server, built by the migrations; its URL.

    Each benchmark takes its own (dropped first if a previous run left it), so one module's rows
    never slow down another's queries.
    """
    from migrations import upgrade
    from tests import services

    services.drop_database(env.postgres_url, name)
    url = services.create_database(env.postgres_url, name)
    upgrade(url)
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(database_url: str, data_dir: str | Path, **settings: str) -> dict[str, str]:
    """The environment of a server a benchmark starts: this one without its FTDEPLOY_ settings,
    then the benchmark's database, data directory and `settings` (FTDEPLOY_ + upper-cased)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTDEPLOY_")}
    env.update(
        FTDEPLOY_DATABASE_URL=database_url, FTDEPLOY_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1"
    )
    env.update({f"FTDEPLOY_{name.upper()}": value for name, value in settings.items()})
    return env


@contextmanager
def http_server(
    argv: Sequence[str], env: Mapping[str, str], port: int, log: Path, name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """An HTTP server process (`argv`, listening on `port` of loopback), ready once `/healthz`
    answers 200 (within 30 s); terminated when the block ends. Its output goes to `log`."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(argv), cwd=REPO, env=dict(env), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                time.sleep(0.1)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def run_alone(run: Callable[[BenchEnv], list[Row]], argv: list[str]) -> int:
    """`python -m bench.bench_X [--quick]`: one benchmark on servers of its own, a line a row."""
    from tests import services

    with services.start_postgres() as postgres, services.start_redis() as redis:
        for row in run(BenchEnv(postgres.url, redis.url, quick="--quick" in argv)):
            print(
                f"{row.name}: {row.ours:g} {row.unit} vs {row.baseline:g} "
                f"({row.baseline_name}); ratio {row.ratio:.2f}"
                + (f"; goal {row.goal}: {'met' if row.met else 'NOT met'}" if row.goal else "")
                + (f"; {row.notes}" if row.notes else "")
            )
    return 0
