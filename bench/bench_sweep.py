"""The auto-promote sweep over many live canaries: time per sweep and SQL statements per sweep.

Two databases on the same PostgreSQL server, built the same way: N tenants, each with v1 serving
90% and v2 a live canary at 10% (auto-promote on, its step begun 30 s ago), and outcome counters
for both versions in the window (3 buckets each). The bake time is an hour, so every canary
holds: a sweep is then the read (two statements for all canaries), a decision per canary and the
retention check, with nothing to apply, which is what almost every sweep of a real fleet is.

The figure of 10,000 canaries (quick: 1,000) is put next to 1,000 canaries (quick: 100) measured
in the same run. Statements are counted with a `before_cursor_execute` listener on the engine;
their number must not grow with the number of canaries. Time per sweep is the median of several
sweeps after one warm-up sweep; it grows with N (each canary is decided), but per canary it
should stay flat or fall.

Run alone: `python -m bench.bench_sweep [--quick]` (starts its own PostgreSQL and Redis).
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from bench.common import BenchEnv, Row, fresh_database, run_alone
from registry.canary.sweep import SweepReport
from registry.db import session_factory
from registry.models import (
    Deployment,
    DeploymentPolicy,
    FinetuningRun,
    ModelVersion,
    OutcomeCounter,
    Tenant,
)
from tests.statements import recorded_statements
from worker.sweep import run_sweep

BATCH = 2_000  # tenants per bulk insert


def _populate(url: str, canaries: int, now: datetime) -> None:
    """`canaries` tenants, each with a live canary, bulk-inserted (no registry calls: building
    10,000 canaries through `deploy` would take longer than the benchmark itself)."""
    sessions = session_factory(url)
    step_start = now - timedelta(seconds=30)
    buckets = [step_start + timedelta(seconds=10 * (i + 1)) for i in range(3)]
    for first in range(0, canaries, BATCH):
        rows: dict[type[Any], list[dict[str, Any]]] = {
            model: []
            for model in (
                Tenant,
                DeploymentPolicy,
                FinetuningRun,
                ModelVersion,
                Deployment,
                OutcomeCounter,
            )
        }
        for n in range(first, min(first + BATCH, canaries)):
            tenant = uuid.uuid4()
            rows[Tenant].append({"id": tenant, "slug": f"t{n:06d}", "created_at": now})
            rows[DeploymentPolicy].append(
                {
                    "tenant_id": tenant,
                    "strategy": "canary",
                    "canary_percent": 10,
                    "canary_steps": [10, 25, 50, 100],
                    "auto_promote": True,
                    "auto_promote_threshold": 0.95,
                    "metric": "success_rate",
                    "min_samples": 100,
                    "bake_seconds": 3600,
                    "progress_deadline_seconds": 86400,
                    "auto_rollback": True,
                    "require_evaluation": False,
                    "keep_deprecated": 3,
                    "updated_at": now,
                }
            )
            for version, share in ((1, 90), (2, 10)):
                run, version_id = uuid.uuid4(), uuid.uuid4()
                rows[FinetuningRun].append(
                    {
                        "id": run,
                        "tenant_id": tenant,
                        "openai_job_id": f"ftjob-{n:06d}-{version}",
                        "status": "succeeded",
                        "fine_tuned_model": f"ft:m:{n}:{version}",
                        "result_metrics": {},
                        "created_at": now,
                    }
                )
                rows[ModelVersion].append(
                    {
                        "id": version_id,
                        "tenant_id": tenant,
                        "name": f"v{version}",
                        "model_id": f"ft:m:{n}:{version}",
                        "version": version,
                        "status": "production",
                        "run_id": run,
                        "metrics": {},
                        "traffic_percent": share,
                        "created_at": now,
                        "deployed_at": step_start,
                    }
                )
                rows[Deployment].append(
                    {
                        "id": uuid.uuid4(),
                        "tenant_id": tenant,
                        "run_id": run,
                        "version_id": version_id,
                        "strategy": "canary",
                        "initial_traffic": share if version == 2 else 100,
                        "auto_promote": True,
                        "auto_promote_threshold": 0.95,
                        "status": "active" if version == 2 else "promoted",
                        "reason": "bench",
                        "step_started_at": step_start,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                for bucket in buckets:
                    requests = 90 if version == 1 else 10
                    rows[OutcomeCounter].append(
                        {
                            "tenant_id": tenant,
                            "version_id": version_id,
                            "bucket_start": bucket,
                            "requests": requests,
                            "successes": requests - (n + version) % 2,
                            "score_sum": 0.0,
                            "score_sq_sum": 0.0,
                            "score_count": 0,
                            "latency_ms_sum": 0.0,
                            "latency_count": 0,
                        }
                    )
        with sessions() as session, session.begin():
            for model, values in rows.items():
                session.execute(insert(model), values)


def _measure(url: str, now: datetime, sweeps: int) -> tuple[float, int, SweepReport]:
    """Median seconds per sweep, statements per sweep (the same in every sweep), a report."""
    sessions: sessionmaker[Session] = session_factory(url)
    engine = sessions.kw["bind"]
    run_sweep(now, database=sessions)  # warm-up: connections, caches
    times, statements = [], set()
    with recorded_statements(engine) as seen:
        for _ in range(sweeps):
            seen.clear()
            started = time.perf_counter()
            report = run_sweep(now, database=sessions)
            times.append(time.perf_counter() - started)
            statements.add(len(seen))
    if len(statements) != 1:
        raise RuntimeError(f"statements per sweep varied between sweeps: {sorted(statements)}")
    return statistics.median(times), statements.pop(), report


def run(env: BenchEnv) -> list[Row]:
    small, large = (100, 1_000) if env.quick else (1_000, 10_000)
    sweeps = 3 if env.quick else 5
    now = datetime.now(UTC).replace(microsecond=0)
    figures: dict[int, tuple[float, int]] = {}
    for canaries in (small, large):
        url = fresh_database(env, f"bench_sweep_{canaries}")
        _populate(url, canaries, now)
        seconds, statements, report = _measure(url, now, sweeps)
        # The benchmark measures what it claims: every canary read, decided, and held.
        if report.canaries != canaries or report.decisions() != {"hold": canaries}:
            raise RuntimeError(f"unexpected sweep: {report.as_dict()}")
        figures[canaries] = (seconds, statements)
        session_factory(url).kw["bind"].dispose()
    (t_small, s_small), (t_large, s_large) = figures[small], figures[large]
    per_canary = {n: round(t / n * 1e6, 1) for n, (t, _) in figures.items()}
    return [
        Row(
            name=f"auto-promote sweep over {large:,} live canaries: SQL statements",
            ours=s_large,
            baseline=s_small,
            unit="statements/sweep",
            baseline_name=f"the same sweep over {small:,} canaries",
            higher_is_better=False,
            goal="does not grow with N (ratio 1.0)",
            met=s_large == s_small,
            notes={"statements": {small: s_small, large: s_large}},
        ),
        Row(
            name=f"auto-promote sweep over {large:,} live canaries: time per sweep",
            ours=round(t_large, 4),
            baseline=round(t_small, 4),
            unit="s/sweep (median)",
            baseline_name=f"the same sweep over {small:,} canaries",
            higher_is_better=False,
            notes={"µs per canary": per_canary, "sweeps timed": sweeps},
        ),
    ]


if __name__ == "__main__":
    sys.exit(run_alone(run, sys.argv[1:]))
