"""The project's fake OpenAI: a real HTTP server the real `openai` SDK talks to via `base_url`.

Tests, benchmarks and `ftdeploy demo` use it in place of api.openai.com. It serves the two calls
ftdeploy makes — `GET /v1/fine_tuning/jobs/{id}` and `GET /v1/files/{id}/content` — with bodies
shaped like OpenAI's, and lets a test script each job's life and its failures.

Guarantees:

- Each job walks a scripted status sequence: every answered GET of the job returns the current
  step and advances one, staying on the last (`("running", "running", "succeeded")` needs three
  polls to succeed). A request answered with a fault does not advance it; a slow one does.
- Faults are a per-job queue: each request for the job or for its result file consumes one.
- Every `/v1` request without `Authorization: Bearer …` gets a 401. The header is never logged
  or stored; only a masked form appears in a 401 body, as OpenAI does.
- Thread-safe; binds 127.0.0.1 by default (port 0 picks a free port); `stop()` returns promptly
  even while a slow reply is pending, and closes kept-alive connections.
- Stdlib only, so it runs anywhere the tests do. `ftdeploy fake-openai --port N` (or
  `python -m worker.demo.fake_openai --port N`) runs it in the foreground; the `/_fake/…` admin
  API scripts it from another process.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

from worker.demo.fake_openai_http import FakeHandler, FakeServer
from worker.demo.fake_openai_jobs import (
    DEFAULT_ERROR,
    DEFAULT_METRICS,
    DEFAULT_MODEL,
    ID_RE,
    JOB_STATUSES,
    Fault,
    ScriptedFault,
    ScriptedJob,
    check_fault,
    column_ok,
    finite,
)


class FakeOpenAI:
    """A fake OpenAI server: `with FakeOpenAI() as fake: OpenAI(base_url=fake.base_url, …)`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._jobs: dict[str, ScriptedJob] = {}
        self._files: dict[str, str] = {}  # result file id -> job id
        self._stopping = threading.Event()
        self._server: FakeServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        """Binds and serves in a daemon thread; returns self. Idempotent; restartable."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = FakeServer((self._host, self._port), FakeHandler)
        server.fake = self
        # A restart after stop() comes back on the same port, as a recovering upstream would.
        self._port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"fake-openai:{server.server_address[1]}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving, wakes slow replies and closes open connections. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake OpenAI is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT/v1`, what the SDK takes as `base_url`."""
        return f"http://{self._host}:{self.port}/v1"

    # -- scripting ---------------------------------------------------------------------------
    def add_job(
        self,
        job_id: str,
        *,
        statuses: Sequence[str] = ("succeeded",),
        model: str = DEFAULT_MODEL,
        fine_tuned_model: str | None = None,
        tenant: str | None = None,
        trained_tokens: int = 48_210,
        error: Mapping[str, str | None] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> str:
        """Adds (or replaces, resetting its counters) a job; returns its result file id.

        `fine_tuned_model` None derives `ft:{model}:acme::{suffix}`; "" makes the job succeed
        without one (OpenAI should never do that; the registry must refuse it). `error` is the
        `{code, message, param}` a failed job reports. Raises ValueError on bad arguments.
        """
        if not isinstance(job_id, str) or not ID_RE.fullmatch(job_id):
            raise ValueError(f"job_id must match {ID_RE.pattern}, got {job_id!r}")
        statuses = tuple(statuses)
        if not statuses or any(s not in JOB_STATUSES for s in statuses):
            raise ValueError(f"statuses must be a non-empty sequence of {sorted(JOB_STATUSES)}")
        if isinstance(trained_tokens, bool) or not isinstance(trained_tokens, int):
            raise ValueError("trained_tokens must be an int")
        final = dict(DEFAULT_METRICS if metrics is None else metrics)
        if not all(column_ok(k) and finite(v) for k, v in final.items()):
            raise ValueError("metrics must map column names to finite numbers")
        err = dict(DEFAULT_ERROR if error is None else error)
        if not isinstance(err.get("code"), str) or not isinstance(err.get("message"), str):
            raise ValueError("error must have string 'code' and 'message'")
        err.setdefault("param", None)
        # Deterministic per job id, so reruns of a test or the demo see the same model names.
        suffix = format(int(hashlib.sha256(job_id.encode()).hexdigest()[:10], 16), "x")[:8]
        if fine_tuned_model is None:
            fine_tuned_model = f"ft:{model}:acme::{suffix}"
        job = ScriptedJob(
            job_id=job_id,
            statuses=statuses,
            model=model,
            fine_tuned_model=fine_tuned_model or None,
            tenant=tenant,
            trained_tokens=trained_tokens,
            error=err,
            metrics={k: float(v) for k, v in final.items()},
            created_at=int(time.time()) - 3600,
            file_id=f"file-result{suffix}",
            suffix=suffix,
        )
        with self._lock:
            old = self._jobs.pop(job_id, None)
            if old is not None:
                self._files.pop(old.file_id, None)
            self._jobs[job_id] = job
            self._files[job.file_id] = job_id
        return job.file_id

    def inject(self, job_id: str, *faults: Fault | Sequence[object]) -> None:
        """Queues faults for the job's next requests, one per request. KeyError if unknown."""
        checked = [check_fault(f) for f in faults]
        with self._lock:
            self._jobs[job_id].faults.extend(checked)

    def request_times(self, job_id: str) -> list[float]:
        """When each GET of the job object arrived (`time.monotonic()`), faulted ones included:
        the spacing of a client's retries, as the server saw it."""
        with self._lock:
            return list(self._jobs[job_id].arrivals)

    def requests(self, job_id: str) -> int:
        """How many GETs of the job object were received, faulted ones included."""
        with self._lock:
            return self._jobs[job_id].requests

    def file_requests(self, job_id: str) -> int:
        """How many GETs of the job's result file were received, faulted ones included."""
        with self._lock:
            return self._jobs[job_id].file_requests

    def pending_faults(self, job_id: str) -> int:
        with self._lock:
            return len(self._jobs[job_id].faults)

    # -- used by the handler -----------------------------------------------------------------
    def _arrive(
        self, job_id: str, *, file: bool
    ) -> tuple[ScriptedJob | None, ScriptedFault | None]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None, None
            if file:
                job.file_requests += 1
            else:
                job.requests += 1
                job.arrivals.append(time.monotonic())
            return job, job.faults.popleft() if job.faults else None

    def _advance(self, job: ScriptedJob) -> str:
        with self._lock:
            status = job.statuses[min(job.step, len(job.statuses) - 1)]
            job.step += 1
            return status

    def _job_for_file(self, file_id: str) -> str | None:
        with self._lock:
            return self._files.get(file_id)


def main(argv: Sequence[str] | None = None, prog: str = "python -m worker.demo.fake_openai") -> int:
    """Runs the fake in the foreground until SIGINT/SIGTERM; prints its base URL first, then
    what to set to point ftdeploy at it. `--job ID[:TENANT]` adds a job that has succeeded."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--job",
        action="append",
        default=[],
        metavar="ID[:TENANT]",
        help="a succeeded job to serve (repeatable); TENANT goes in its metadata",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with FakeOpenAI(args.host, args.port) as fake:
        for spec in args.job:
            job_id, _, tenant = spec.partition(":")
            fake.add_job(job_id, tenant=tenant or None)
        # The line a parent process waits for: the server is accepting once it is printed.
        print(f"fake OpenAI listening on {fake.base_url}", flush=True)
        root = fake.base_url.removesuffix("/v1")
        print(
            "point ftdeploy (the CLI, the worker) at it with:\n"
            f"  export OPENAI_BASE_URL={fake.base_url}\n"
            "  export OPENAI_API_KEY=sk-fake  (any value: the fake only wants one)\n"
            "add a succeeded job (its tenant in metadata, as a webhook needs):\n"
            f"  curl -X POST {root}/_fake/jobs -d "
            """'{"job_id": "ftjob-1", "tenant": "acme"}'\n"""
            "stop with Ctrl-C",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
