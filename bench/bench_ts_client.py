"""The TypeScript client's resolve (`clients/typescript/bench/resolve.mjs`: calls/s and p50 with a
returning subject, from memory) against (a) one HTTP request per call to
`GET /v1/tenants/{t}/resolve` on a real `ftdeploy serve` started here (sequential, keep-alive, on
loopback, from the same Node process; goal: the client >= 1,000x) and (b) a bare `Map.get` in
the same Node process (the limit of any in-memory answer; informs). Tenant `canary` at 90/10.

Skipped, with a note and no rows, when `node` is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bench_resolve import _setup
from bench.common import (
    FTDEPLOY,
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

SCRIPT = REPO / "clients" / "typescript" / "bench" / "resolve.mjs"
HTTP = "one HTTP request per call: GET /v1/tenants/{t}/resolve on `ftdeploy serve` (sequential)"
LIMIT = "a bare Map.get(subject) in the same Node process (the limit)"


def _node_bench(node: str, url: str, key: str, quick: bool) -> dict[str, Any]:
    argv = [node, str(SCRIPT), "--url", url, *(["--quick"] if quick else [])]
    env = {**os.environ, "FTDEPLOY_API_KEY": key}
    out = subprocess.run(
        argv, cwd=SCRIPT.parent.parent, env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"resolve.mjs failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def run(env: BenchEnv) -> list[Row]:
    from tests.clients.node import NODE, built_client

    if NODE is None:
        print("bench_ts_client: skipped, node is not installed", flush=True)
        return []
    built_client()
    url = fresh_database(env, "bench_ts_client")
    _setup(url)
    with unit_of_work(url) as session:
        _, key = keys.create_key(session, "bench-ts", "serve")
    port = free_port()
    argv = [str(FTDEPLOY), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with tempfile.TemporaryDirectory(prefix="ftdeploy-bench-ts-") as tmp:
        served = server_env(url, tmp, broker_url=env.redis_url)
        with http_server(argv, served, port, Path(tmp) / "serve.log", "ftdeploy serve"):
            target = f"http://127.0.0.1:{port}/v1/tenants/canary/resolve?subject=user-42"
            result = _node_bench(NODE, target, key, env.quick)
    rows = result["rows"]
    ours, http, limit = rows["resolve_subject"], rows["http"], rows["map_get"]
    notes = {"node": result["node"], "split": result["split"], "rows": rows}
    ratio = ours["calls_per_s"] / http["calls_per_s"]
    print(
        f"bench_ts_client: resolve {ratio:,.0f}x the HTTP call's calls/s, "
        f"{http['p50_ns'] / ours['p50_ns']:,.0f}x its p50; "
        f"{ours['calls_per_s'] / limit['calls_per_s']:.2f} of Map.get's calls/s",
        flush=True,
    )
    return [
        Row("TS client resolve, returning subject", ours["calls_per_s"], http["calls_per_s"],
            "calls/s", HTTP, goal=">= 1,000x", met=ratio >= 1000, notes=notes),
        Row("TS client resolve p50, returning subject", ours["p50_ns"], http["p50_ns"], "ns",
            HTTP, higher_is_better=False),
        Row("TS client resolve vs Map.get, returning subject", ours["calls_per_s"],
            limit["calls_per_s"], "calls/s", LIMIT),
        Row("TS client resolve p50 vs Map.get, returning subject", ours["p50_ns"],
            limit["p50_ns"], "ns", LIMIT, higher_is_better=False),
    ]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(run_alone(run, sys.argv[1:]))
