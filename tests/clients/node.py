"""The TypeScript client as the Python side runs it: `node`, and the client's build."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "typescript"
NODE = shutil.which("node")


def built_client() -> Path:
    """The client's dist/, built now (`npm ci` if needed, `npm run build`) if it is missing or
    older than its sources. Raises RuntimeError when it cannot be built."""
    dist = CLIENT / "dist" / "index.js"
    sources = max(p.stat().st_mtime for p in (CLIENT / "src").glob("*.ts"))
    if dist.exists() and dist.stat().st_mtime >= sources:
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to build clients/typescript (dist/ is missing or stale)")
    steps = [[npm, "run", "build"]]
    if not (CLIENT / "node_modules").exists():
        steps.insert(0, [npm, "ci"])
    for step in steps:
        done = subprocess.run(step, cwd=CLIENT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step[1:])} failed:\n{done.stdout}{done.stderr}")
    return dist
