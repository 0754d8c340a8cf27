"""`python -m worker.cli`: the console script without an installed entry point."""

from worker.cli import run

run()
