"""`python -m bench --quick` runs every benchmark and reports in the documented shape.

A smoke test: it checks that each benchmark runs and what the table and the JSON hold, never how
fast anything was (speed claims live in bench/, as ratios measured in the same run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import discover

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = {
    "name", "ours", "baseline", "unit", "baseline_name", "higher_is_better", "goal", "met",
    "notes", "ratio",
}  # fmt: skip


def test_quick_run_prints_one_table_and_writes_json(tmp_path: Path) -> None:
    target = tmp_path / "results" / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(target)],
        cwd=REPO, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    report = json.loads(target.read_text())
    assert report["quick"] is True and report["errors"] == {}
    assert {"cpu", "cores", "python"} <= set(report["machine"])
    modules = discover()
    assert set(report["module_seconds"]) == set(modules)
    assert {"bench_resolve", "bench_worker"} <= set(modules)
    rows = report["rows"]
    assert rows and all(set(row) == ROW_KEYS for row in rows)
    for row in rows:
        assert isinstance(row["ours"], int | float) and isinstance(row["baseline"], int | float)
        assert row["met"] in (True, False, None) and (row["met"] is None) == (row["goal"] == "")
    names = [row["name"] for row in rows]
    for expected in (
        "resolve, no subject",
        "resolve, with subject",
        "resolve p50, no subject",
        "resolve p50, with subject",
        "staleness, promotion in another process (max)",
        "job-finished events through the worker",
    ):
        assert expected in names
    assert any(name.startswith("worker RSS per pool process") for name in names)

    # One table: a header with the documented columns, a line per row, and the machine.
    out = run.stdout
    header = next(line for line in out.splitlines() if line.startswith("benchmark"))
    assert header.split() == ["benchmark", "ours", "baseline", "ratio", "goal", "met"]
    for name in names:
        assert name in out
    assert out.startswith("machine: ") and str(report["machine"]["cores"]) in out.splitlines()[0]
    assert (REPO / "bench" / "results" / "latest-quick.json").exists()


def test_only_and_unknown_names() -> None:
    assert discover(["resolve"]) == ["bench_resolve"]
    assert discover(["bench_resolve", "worker"]) == ["bench_resolve", "bench_worker"]
    with pytest.raises(SystemExit):
        discover(["no_such_benchmark"])
