"""What every benchmark shares: its result row, and the servers it measures against.

A benchmark module `bench/bench_*.py` exposes `run(env: BenchEnv) -> list[Row]`. Each row puts
ftdeploy's figure next to a baseline measured in the same run on the same machine, so the ratio
means something on a noisy machine where absolute numbers do not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


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
