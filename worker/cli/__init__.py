"""The `ftdeploy` console script: `main(argv)` returns the exit code, `run()` exits with it."""

from worker.cli.main import main, run

__all__ = ["main", "run"]
