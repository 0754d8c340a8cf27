"""HTTP resolve: `GET /v1/tenants/{tenant}/resolve?subject=…` on the real server, 64 keep-alive
connections from a load generator in another process (bench/loadgen.py), on loopback.

One server process (`uvicorn bench.http_app:create_app`, the API as `ftdeploy serve` builds it)
answers three routes behind the same stack and the same key check, measured one after another:
ours (the routing cache: a pick, no query), (a) a constant answer (what uvicorn, FastAPI and the
key check cost by themselves; goal: ours >= 0.7 of it) and (b) the seed's one SQL query per
request. Tenant `canary` at v1 90% / v2 10%; subjects rotate through 10,000 users.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.bench_resolve import _setup
from bench.common import (
    REPO,
    BenchEnv,
    Row,
    free_port,
    fresh_database,
    http_server,
    run_alone,
    server_env,
)
from registry import keys
from registry.db import unit_of_work

CONNECTIONS = 64
ROUTES = {
    "ours": "/v1/tenants/canary/resolve?subject={subject}",
    "constant": "/bench/constant/canary/resolve?subject={subject}",
    "seed": "/bench/seed/canary/resolve?subject={subject}",
}


def _server_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--factory", "bench.http_app:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def _load(port: int, path: str, key: str, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable, "-m", "bench.loadgen", f"http://127.0.0.1:{port}{path}",
            "--connections", str(CONNECTIONS), "--seconds", str(seconds),
            "--header", f"Authorization: Bearer {key}",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout)
    if result["errors"]:
        raise RuntimeError(f"{path}: {result['errors']} non-200 answers")
    return result


def _median(found: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median throughput (its latencies with it)."""
    return sorted(found, key=lambda r: r["rps"])[len(found) // 2]


def run(env: BenchEnv) -> list[Row]:
    url = fresh_database(env, "bench_http")
    _setup(url)
    with unit_of_work(url) as session:
        _, key = keys.create_key(session, "bench", "serve")
    seconds = 1.5 if env.quick else 5.0
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"ftdeploy-bench-http-{os.getpid()}.log"
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ROUTES}
    with http_server(_server_argv(port), server_env(url, log.parent), port, log, "bench server"):
        # Rounds, each in a rotated order: on a shared machine the load drifts, and a figure
        # measured alone at a bad moment would skew its ratio.
        names = list(ROUTES)
        for round_ in range(1 if env.quick else 3):
            for name in names[round_ % 3 :] + names[: round_ % 3]:
                runs[name].append(_load(port, ROUTES[name], key, seconds))
    results = {name: _median(found) for name, found in runs.items()}
    ours, constant, seed = results["ours"], results["constant"], results["seed"]
    notes = {"connections": CONNECTIONS, "seconds": seconds, "runs": runs}
    stack = "same server answering a constant (uvicorn + FastAPI + key check)"
    seeded = "seed: one SQL query per request, same server and stack"
    ratio = ours["rps"] / constant["rps"]
    return [
        Row("HTTP resolve, 64 connections", ours["rps"], constant["rps"], "req/s", stack,
            goal=">= 0.7x", met=ratio >= 0.7, notes=notes),
        Row("HTTP resolve p50, 64 connections", ours["p50_ms"], constant["p50_ms"], "ms", stack,
            higher_is_better=False),
        Row("HTTP resolve p99, 64 connections", ours["p99_ms"], constant["p99_ms"], "ms", stack,
            higher_is_better=False),
        Row("HTTP resolve vs seed, 64 connections", ours["rps"], seed["rps"], "req/s", seeded,
            goal="> 1x", met=ours["rps"] > seed["rps"]),
        Row("HTTP resolve p99 vs seed, 64 connections", ours["p99_ms"], seed["p99_ms"], "ms",
            seeded, higher_is_better=False),
    ]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(run_alone(run, sys.argv[1:]))
