"""`python -m bench [--quick] [--only NAME] [--json PATH]`: run every benchmark, print one table.

Starts a throwaway PostgreSQL and Redis (tests/services.py), runs each `bench/bench_*.py`
module's `run(env)` in name order, prints one table — ftdeploy's figure, the baseline measured in
the same run, their ratio, the goal and whether it was met — with the machine it ran on, and
writes the results as JSON to bench/results/latest.json (latest-quick.json for --quick; and to
--json PATH, for comparing commits). A module that raises is reported in the table and the
JSON, and the exit status is then 1. Run from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import pkgutil
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import BenchEnv, Row

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def discover(only: Sequence[str] = ()) -> list[str]:
    """Module names of bench/bench_*.py, sorted; `only` keeps those named (with or without the
    `bench_` prefix)."""
    names = sorted(
        info.name for info in pkgutil.iter_modules([str(HERE)]) if info.name.startswith("bench_")
    )
    if only:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in only}
        unknown = wanted - set(names)
        if unknown:
            raise SystemExit(f"no such benchmark: {', '.join(sorted(unknown))} (have {names})")
        names = [n for n in names if n in wanted]
    return names


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
    }
    with contextlib.suppress(OSError, ValueError):
        load = os.getloadavg()
        info["load_at_start"] = [round(x, 2) for x in load]
    info["postgres"] = _version(["postgres", "--version"])
    info["redis"] = _version(["redis-server", "--version"])
    return info


def _version(argv: list[str]) -> str | None:
    if argv[0] == "postgres":
        from tests.services import postgres_bindir

        try:
            argv = [str(postgres_bindir() / "postgres"), *argv[1:]]
        except RuntimeError:
            return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, cwd=HERE, timeout=10, check=True
    ).stdout.strip()


def _commit() -> str | None:
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def format_number(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100_000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _ratio(ratio: float) -> str:
    if ratio != ratio:  # NaN
        return "-"
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.3g}x"


def table(rows: Sequence[Row], errors: dict[str, str]) -> str:
    header = ("benchmark", "ours", "baseline", "ratio", "goal", "met")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "NO")
        lines.append(
            (
                row.name,
                f"{format_number(row.ours)} {row.unit}",
                f"{format_number(row.baseline)} {row.unit}",
                _ratio(row.ratio),
                row.goal,
                met,
            )
        )
    for module, error in errors.items():
        lines.append((module, "ERROR", error.strip().splitlines()[-1][:60], "", "", "NO"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        cells = [
            cell.ljust(width) if i in (0, 4, 5) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    baselines: dict[str, list[str]] = {}
    for row in rows:
        baselines.setdefault(row.baseline_name, []).append(row.name)
    out.append("")
    out.append("baselines (measured in the same run):")
    for baseline, names in baselines.items():
        out.append(f"  {baseline}")
        out.append(f"      for: {'; '.join(names)}")
    return "\n".join(out)


def _finite(data: Any) -> Any:
    """Strict JSON: a non-finite figure (a ratio against a zero baseline, a change never seen)
    is written as null, at any depth."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(value) for value in data]
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this benchmark (e.g. resolve or bench_resolve); repeatable",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here")
    args = parser.parse_args(argv)
    names = discover(args.only)

    from tests import services

    started = time.monotonic()
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, "
        f"{info['implementation']} {info['python']}, {info['os']}",
        flush=True,
    )
    rows: list[Row] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    with services.start_postgres() as postgres, services.start_redis() as redis_server:
        env = BenchEnv(postgres_url=postgres.url, redis_url=redis_server.url, quick=args.quick)
        for name in names:
            print(f"running {name} ...", flush=True)
            began = time.monotonic()
            try:
                module = importlib.import_module(f"bench.{name}")
                produced = list(module.run(env))
                if not all(isinstance(row, Row) for row in produced):
                    raise TypeError(f"{name}.run must return a list of bench.common.Row")
                rows.extend(produced)
            except Exception:
                errors[name] = traceback.format_exc()
                print(errors[name], file=sys.stderr, flush=True)
            timings[name] = round(time.monotonic() - began, 1)

    report = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "quick": args.quick,
        "machine": info,
        "seconds": round(time.monotonic() - started, 1),
        "module_seconds": timings,
        "rows": [_finite(row.as_dict()) for row in rows],
        "errors": errors,
    }
    print()
    print(table(rows, errors))
    print(f"\n{len(rows)} rows from {len(names)} modules in {report['seconds']} s")
    text = json.dumps(report, indent=2, default=str, allow_nan=False) + "\n"
    RESULTS.mkdir(exist_ok=True)
    # A quick (smoke) run never overwrites the figures of the last full run.
    latest = RESULTS / ("latest-quick.json" if args.quick else "latest.json")
    targets = [latest] + ([args.json] if args.json else [])
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"results written to {target}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
