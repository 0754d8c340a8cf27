"""`ftdeploy demo`: the whole flow on one machine, on embedded defaults, in well under a minute.

It runs in a temporary data directory (SQLite + the filesystem broker, no server needed), with
the project's fake OpenAI in a thread of this process and a real `ftdeploy worker` (Celery
worker + beat) as a child process. Every action goes through the same doors a user has: the
`ftdeploy` commands publish events and queue operations, the worker handles them.

Guarantees: nothing outside the temporary directory is read or written (any FTDEPLOY_DATABASE_URL
or FTDEPLOY_BROKER_URL of the caller is ignored, and the environment is restored afterwards); the
worker is stopped and the directory removed (unless `keep`) whatever happens; exit status 0 only
when every step reached its expected state, 1 with the step and the worker's log otherwise.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

STEP_TIMEOUT = 30.0  # seconds for one step to reach its state; a healthy run needs ~1-2
WORKER_START_TIMEOUT = 60.0
_T = TypeVar("_T")

# The environment the demo (and its worker) runs with; every other FTDEPLOY_/OPENAI_ variable of
# the caller is removed for the duration, so the demo cannot touch a real database or account.
_DEMO_SETTINGS = {
    "FTDEPLOY_JOB_POLL_SECONDS": "0.3",
    "FTDEPLOY_JOB_POLL_MAX_SECONDS": "2",
    "OPENAI_API_KEY": "sk-demo-not-a-real-key",
}


class DemoFailed(Exception):
    """A step did not reach its expected state."""


def run_demo(keep: bool = False) -> int:
    """Run the demo; returns the exit status (0: every step reached its expected state)."""
    started = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="ftdeploy-demo-"))
    from worker.demo.fake_openai import FakeOpenAI

    worker: subprocess.Popen[bytes] | None = None
    log_path = data_dir / "worker.log"
    try:
        with FakeOpenAI() as fake, _demo_environment(data_dir, fake.base_url):
            _say(
                f"ftdeploy demo: SQLite + filesystem broker in {data_dir}, "
                f"fake OpenAI at {fake.base_url}"
            )
            from migrations import upgrade
            from registry.settings import get_settings

            upgrade(get_settings().database_url_value)
            worker = _start_worker(log_path)
            _cli("tenant", "add", "acme", "--strategy", "canary", "--canary-percent", "20",
                 "--no-require-evaluation")  # fmt: skip
            _cli("tenant", "add", "globex", "--strategy", "immediate", "--require-evaluation")
            _wait_for_worker(worker, log_path)
            _say(
                f"worker running (pid {worker.pid}); tenants: acme (canary 20%, no evaluation "
                "needed), globex (immediate, evaluation required)\n"
            )
            _walk_through(fake)
    except DemoFailed as error:
        _say(f"\ndemo FAILED: {error}")
        if log_path.exists():
            tail = log_path.read_text(errors="replace").splitlines()[-25:]
            _say("last lines of the worker's log:\n  " + "\n  ".join(tail))
        return 1
    finally:
        if worker is not None:
            _stop_worker(worker)
        if keep:
            _say(f"data kept in {data_dir} (worker log: {log_path})")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    _say(f"\ndemo finished in {time.monotonic() - started:.1f} s: every step as expected")
    return 0


def _walk_through(fake: Any) -> None:
    # acme: canary 20%, no evaluation needed.
    fake.add_job("ftjob-demo-acme-1", statuses=("running", "succeeded"), tenant="acme")
    _step("1. acme's fine-tuning job finished (the worker polls OpenAI until it succeeded)")
    _job_finished("ftjob-demo-acme-1")
    _expect_split("acme", {1: 100}, "v1 takes all traffic: nothing else serves yet")

    fake.add_job("ftjob-demo-acme-2", statuses=("succeeded",), tenant="acme")
    _step("2. acme's next job finished")
    _job_finished("ftjob-demo-acme-2")
    _expect_split("acme", {1: 80, 2: 20}, "v2 starts as a 20% canary")

    _step("3. operator: ftdeploy promote acme 2 --wait")
    _operation("promote", "acme", "2")
    _expect_split("acme", {2: 100}, "v2 serves everyone; v1 is kept as deprecated")

    fake.add_job(
        "ftjob-demo-acme-3",
        statuses=("succeeded",),
        tenant="acme",
        metrics={"train_loss": 0.9, "valid_loss": 1.4, "valid_mean_token_accuracy": 0.41},
    )
    _step("4. acme's v3 finished (a bad model: valid_loss 1.4) and went out as a canary")
    _job_finished("ftjob-demo-acme-3")
    _expect_split("acme", {2: 80, 3: 20}, "v3 canary at 20%")
    _step("   operator: ftdeploy rollback acme --wait")
    _operation("rollback", "acme")
    _expect_split("acme", {2: 100}, "v3 rolled back; it is never restored")

    # globex: immediate, evaluation required.
    fake.add_job("ftjob-demo-globex-1", statuses=("succeeded",), tenant="globex")
    _step("5. globex's job finished; its policy requires an evaluation, none recorded yet")
    _job_finished("ftjob-demo-globex-1")
    _expect_deployment("ftjob-demo-globex-1", "awaiting_evaluation")
    _expect_split("globex", {}, "the deployment waits")
    _step("   ftdeploy evaluation record ftjob-demo-globex-1 --recommendation approve")
    _cli("evaluation", "record", "ftjob-demo-globex-1", "--recommendation", "approve",
         "--metric", "accuracy=0.93")  # fmt: skip
    _expect_split("globex", {1: 100}, "the waiting deployment resumed")

    fake.add_job("ftjob-demo-globex-2", statuses=("running", "failed"), tenant="globex")
    _step("6. globex's next job failed at OpenAI")
    outcome = _job_finished("ftjob-demo-globex-2")
    _expect_split("globex", {1: 100}, f"run recorded: {outcome}")

    fake.add_job("ftjob-demo-globex-3", statuses=("succeeded",), tenant="globex")
    _step("7. globex's third job succeeded, but its evaluation recommends reject")
    _job_finished("ftjob-demo-globex-3")
    _expect_deployment("ftjob-demo-globex-3", "awaiting_evaluation")
    _cli("evaluation", "record", "ftjob-demo-globex-3", "--recommendation", "reject",
         "--metric", "accuracy=0.52")  # fmt: skip
    reason = _expect_deployment("ftjob-demo-globex-3", "rejected")
    _expect_split("globex", {1: 100}, f"deployment rejected: {reason}; nothing deployed")
    _expect_split("acme", {2: 100}, "acme untouched by globex's jobs")


# -- steps ------------------------------------------------------------------------------------


def _job_finished(job_id: str) -> str:
    """Publish the event as the pipeline would; wait until the worker ended it as done."""
    from registry.db import unit_of_work
    from registry.jobs.events import find_event
    from registry.models import EventState

    _cli("job-finished", job_id)

    def ended() -> tuple[str, str] | None:
        with unit_of_work() as session:
            event = find_event(session, job_id)
            if event is None or event.state == EventState.RECEIVED:
                return None
            return str(event.state), event.outcome or ""

    state, outcome = _wait(ended, f"the worker to handle the event for {job_id}")
    if state != EventState.DONE:
        raise DemoFailed(f"the event for {job_id} ended {state}: {outcome}")
    return outcome


def _operation(kind: str, *arguments: str) -> None:
    output = _cli(kind, *arguments, "--wait", "--timeout", str(STEP_TIMEOUT))
    _say(f"   → {output.strip()}")


def _expect_split(tenant: str, wanted: dict[int, int], note: str) -> None:
    def reached() -> bool:
        return _split(tenant) == wanted

    _wait(reached, f"{tenant}'s traffic to become {_split_text(wanted)}")
    _say(f"   {tenant}: {_split_text(wanted)}   ({note})")


def _expect_deployment(job_id: str, status: str) -> str:
    from sqlalchemy import select

    from registry.db import unit_of_work
    from registry.models import Deployment, FinetuningRun

    def reached() -> str | None:
        with unit_of_work() as session:
            deployment = session.scalars(
                select(Deployment)
                .join(FinetuningRun, FinetuningRun.id == Deployment.run_id)
                .where(FinetuningRun.openai_job_id == job_id)
            ).one_or_none()
            if deployment is None or deployment.status != status:
                return None
            return deployment.reason or status

    return _wait(reached, f"the deployment of {job_id} to be {status}")


def _split(tenant: str) -> dict[int, int]:
    from registry import versions
    from registry.db import unit_of_work
    from registry.models import VersionStatus

    with unit_of_work() as session:
        return {
            v.version: v.traffic_percent
            for v in sorted(versions.list_versions(session, tenant), key=lambda v: v.version)
            if v.status == VersionStatus.PRODUCTION
        }


def _split_text(split: dict[int, int]) -> str:
    if not split:
        return "no version serving"
    return " · ".join(f"v{version} {percent}%" for version, percent in sorted(split.items()))


# -- plumbing ---------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, flush=True)


def _step(text: str) -> None:
    _say(text)


def _cli(*argv: str) -> str:
    """Run an `ftdeploy` command in this process; its output is returned, not printed."""
    from worker import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    if code != 0:
        detail = (err.getvalue() or out.getvalue()).strip()
        raise DemoFailed(f"`ftdeploy {' '.join(argv)}` exited {code}: {detail}")
    return out.getvalue()


def _wait(condition: Callable[[], _T | None], what: str) -> _T:
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {STEP_TIMEOUT:g} s waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def _demo_environment(data_dir: Path, openai_base_url: str) -> Iterator[None]:
    """Point this process (and the worker it starts) at the demo's data directory and the fake
    OpenAI, then put everything back. Settings and the Celery app are read once per process, so
    their caches are reset on the way in and on the way out."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(("FTDEPLOY_", "OPENAI_"))}
    for key in saved:
        del os.environ[key]
    os.environ.update(
        _DEMO_SETTINGS, FTDEPLOY_DATA_DIR=str(data_dir), OPENAI_BASE_URL=openai_base_url
    )
    _reload_settings()
    try:
        yield
    finally:
        _dispose_database()
        for key in [k for k in os.environ if k.startswith(("FTDEPLOY_", "OPENAI_"))]:
            del os.environ[key]
        os.environ.update(saved)
        # The Celery app keeps the demo's broker settings: rebuilding them from the caller's
        # would create the caller's data directory, where the demo must write nothing.
        _reload_settings(repoint_app=False)


def _reload_settings(repoint_app: bool = True) -> None:
    from registry.settings import get_settings

    get_settings.cache_clear()
    app_module = sys.modules.get("worker.app")
    if app_module is None:
        return  # imported later, it reads the settings now in force
    if repoint_app:
        _repoint(app_module)
    # Connections to the previous broker are cached in these pools; new ones use the new URL.
    app_module.app._pool = None
    app_module.app.amqp._producer_pool = None


def _repoint(app_module: Any) -> None:
    fresh = app_module.make_app()
    app_module.app.conf.update(
        broker_url=fresh.conf.broker_url,
        broker_transport_options=fresh.conf.broker_transport_options,
    )


def _dispose_database() -> None:
    from registry.db import session_factory
    from registry.settings import get_settings

    bind = session_factory(get_settings().database_url_value).kw.get("bind")
    if bind is not None:
        bind.dispose()


def _start_worker(log_path: Path) -> subprocess.Popen[bytes]:
    """`ftdeploy worker` (worker + beat) as a child in its own process group."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker", "--concurrency", "2"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_worker(worker: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while b" ready." not in log_path.read_bytes():
        if worker.poll() is not None:
            raise DemoFailed(f"the worker exited at start (status {worker.returncode})")
        if time.monotonic() > deadline:
            raise DemoFailed(f"the worker did not start within {WORKER_START_TIMEOUT:g} s")
        time.sleep(0.1)


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM to the main process); the whole group is killed if it lingers."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)  # beat or pool children left behind
    worker.wait()
