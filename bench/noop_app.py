"""The worker benchmark's baseline: a Celery app with ftdeploy's own configuration (broker and
its transport options, acks_late, prefetch 1, JSON) and one task that does nothing,
`bench.noop`. Only the benchmark's baseline worker loads it (`celery -A bench.noop_app worker`);
production never imports it."""

from __future__ import annotations

from worker.app import make_app

app = make_app()
# The same configuration, without ftdeploy's tasks: the baseline worker loads nothing else.
app.conf.include = []


@app.task(name="bench.noop")
def noop() -> None:
    """Nothing: what Celery itself costs per task on this broker."""
    return None
