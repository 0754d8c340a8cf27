"""The Celery app the fault suite's workers run (`celery -A tests.faults.fault_app worker`):
ftdeploy's own app and tasks, plus crash points chosen through the environment. Test-only: the
production code carries no hook; nothing here is imported outside the fault suite.

`FTDEPLOY_FAULT_CRASH` is a comma-separated list of `point:job_id`:

- `before_commit:JOB` — the pool process dies (SIGKILL) once, inside the unit of work that
  completes JOB, after every row was written and before the commit.
- `after_commit:JOB` — it dies once right after that unit of work committed, before the task
  returns, so before the broker gets the acknowledgement.
- `poison:JOB` — it dies every time it handles JOB, after the attempt was counted (when it
  would poll OpenAI): a poison event.
- `hold_operation:SLUG` — once, a queued operation of tenant SLUG stops right after its task
  took the tenant's lock (the operation's row locked too, its transaction open, nothing
  decided yet) and sleeps there, so that the test can kill the worker holding it. A file
  `held-operation-SLUG` under FTDEPLOY_DATA_DIR says that the hold began; the sleep ends only
  with the process (or its time limit).

"Once" is remembered in a marker file under FTDEPLOY_DATA_DIR, across the pool's processes.
`FTDEPLOY_FAULT_VISIBILITY_TIMEOUT` (seconds) overrides the broker's visibility timeout after
the settings were checked, to make a task outlive it on purpose.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

import registry.jobs.pipeline
import registry.operations.running
import worker.tasks
from registry.models import Tenant
from registry.settings import get_settings
from worker.app import app

__all__ = ["app"]

CRASH_ENV = "FTDEPLOY_FAULT_CRASH"
VISIBILITY_ENV = "FTDEPLOY_FAULT_VISIBILITY_TIMEOUT"


def _crash_points() -> dict[str, set[str]]:
    points: dict[str, set[str]] = {}
    for item in filter(None, os.environ.get(CRASH_ENV, "").split(",")):
        point, _, job_id = item.partition(":")
        if point not in ("before_commit", "after_commit", "poison", "hold_operation") or not job_id:
            raise ValueError(f"{CRASH_ENV}: bad item {item!r}")
        points.setdefault(point, set()).add(job_id)
    return points


POINTS = _crash_points()


def die(point: str, job_id: str, once: bool = True) -> None:
    """SIGKILL this process if `point` is armed for `job_id` (and, if `once`, not yet fired)."""
    if job_id not in POINTS.get(point, ()):
        return
    if once and not _first_time(f"crashed-{point}-{job_id}"):
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _first_time(name: str) -> bool:
    """True the first time `name` is asked, across the pool's processes (a marker file)."""
    marker = Path(get_settings().data_dir) / name
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        with marker.open("x"):
            pass
    except FileExistsError:
        return False
    return True


def _wrap_lock_tenant(original: Callable[..., Any]) -> Callable[..., Any]:
    def lock_tenant(session: Any, tenant_id: Any, *args: Any, **kwargs: Any) -> Any:
        tenant = original(session, tenant_id, *args, **kwargs)
        slug = session.scalar(select(Tenant.slug).where(Tenant.id == tenant_id))
        if slug in POINTS.get("hold_operation", ()) and _first_time(f"held-operation-{slug}"):
            time.sleep(3600)  # holding the operation until the test kills this process
        return tenant

    return lock_tenant


def _wrap_complete_job(original: Callable[..., Any]) -> Callable[..., Any]:
    def complete_job(session: Any, job: Any, *args: Any, **kwargs: Any) -> Any:
        outcome = original(session, job, *args, **kwargs)
        session.flush()
        die("before_commit", job.job_id)  # the caller's unit of work commits after we return
        return outcome

    return complete_job


def _wrap_unit_of_work(original: Callable[..., Any]) -> Callable[..., Any]:
    from contextlib import contextmanager

    @contextmanager
    def unit_of_work(*args: Any, **kwargs: Any) -> Any:
        with original(*args, **kwargs) as session:
            yield session
        job_id = session.info.pop("fault.completed_job", None)
        if job_id is not None:
            die("after_commit", job_id)

    return unit_of_work


def _note_completion(original: Callable[..., Any]) -> Callable[..., Any]:
    def complete_job(session: Any, job: Any, *args: Any, **kwargs: Any) -> Any:
        outcome = original(session, job, *args, **kwargs)
        session.info["fault.completed_job"] = job.job_id
        return outcome

    return complete_job


def _wrap_fetch_job(original: Callable[..., Any]) -> Callable[..., Any]:
    def fetch_job(client: Any, job_id: str) -> Any:
        die("poison", job_id, once=False)
        return original(client, job_id)

    return fetch_job


def _install() -> None:
    # worker.tasks calls `pipeline.complete_job(...)` through the module and holds its own
    # references to `fetch_job` and `unit_of_work`: patch those names, and fail loudly if a
    # refactoring moved them (a fault test that cannot inject its fault must not pass).
    for module, name in (
        (registry.jobs.pipeline, "complete_job"),
        (worker.tasks, "fetch_job"),
        (worker.tasks, "unit_of_work"),
        # run_operation takes the tenant's lock through this name, after locking the row.
        (registry.operations.running, "lock_tenant"),
    ):
        if not callable(getattr(module, name, None)):
            raise RuntimeError(f"fault app: {module.__name__}.{name} is gone")
    if POINTS.get("before_commit") or POINTS.get("after_commit"):
        completed = _note_completion(registry.jobs.pipeline.complete_job)
        registry.jobs.pipeline.complete_job = _wrap_complete_job(completed)
        worker.tasks.unit_of_work = _wrap_unit_of_work(worker.tasks.unit_of_work)
    if POINTS.get("poison"):
        worker.tasks.fetch_job = _wrap_fetch_job(worker.tasks.fetch_job)
    if POINTS.get("hold_operation"):
        registry.operations.running.lock_tenant = _wrap_lock_tenant(
            registry.operations.running.lock_tenant
        )
    visibility = os.environ.get(VISIBILITY_ENV)
    if visibility:
        seconds = int(visibility)
        options = dict(app.conf.broker_transport_options or {})
        options.update(
            visibility_timeout=seconds, unacked_restore_interval=1, unacked_restore_throttle=1
        )
        app.conf.broker_transport_options = options
        app.conf.result_backend_transport_options = options


_install()
