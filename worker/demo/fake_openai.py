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
- Stdlib only, so it runs anywhere the tests do. `python -m worker.demo.fake_openai --port N`
  runs it in the foreground; the `/_fake/…` admin API scripts it from another process.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import re
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
JOB_STATUSES = frozenset(
    {"validating_files", "queued", "running", "succeeded", "failed", "cancelled"}
)
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
DEFAULT_METRICS: Mapping[str, float] = {
    "train_loss": 0.2311,
    "train_accuracy": 0.9375,
    "valid_loss": 0.312,
    "valid_mean_token_accuracy": 0.9012,
}
DEFAULT_ERROR: Mapping[str, str | None] = {
    "code": "invalid_training_file",
    "message": "The job failed due to an invalid training file: line 12 is not valid JSON.",
    "param": "training_file",
}
# ("malformed", kind): what a broken proxy or an incompatible upstream might send with a 200.
MALFORMED_KINDS = ("json", "text", "shape", "id", "status")

# A fault as tests write it: ("429", retry_after), ("500",), ("slow", seconds), ("malformed",),
# ("malformed", kind), ("drop",), or any other 4xx/5xx code as a string.
Fault = tuple[str] | tuple[str, float] | tuple[str, str]

_ID_RE = re.compile(r"[A-Za-z0-9_:.-]{1,200}")
_MAX_ADMIN_BODY = 1024 * 1024
_ERROR_TEXT = {
    400: ("invalid_request_error", "invalid_request", "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided: {key}."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "fine_tune_not_found", "Not found."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Try again later."),
}
_SERVER_ERROR = ("server_error", None, "The server had an error while processing your request.")


@dataclass(frozen=True)
class _Fault:
    kind: str
    arg: float | str | None = None


@dataclass
class _Job:
    job_id: str
    statuses: tuple[str, ...]
    model: str
    fine_tuned_model: str | None
    tenant: str | None
    trained_tokens: int
    error: dict[str, str | None]
    metrics: dict[str, float]
    created_at: int
    file_id: str
    suffix: str
    step: int = 0
    requests: int = 0
    file_requests: int = 0
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each job GET
    faults: deque[_Fault] = field(default_factory=deque)


def _check_fault(raw: Sequence[object]) -> _Fault:
    """Normalizes one fault tuple; raises ValueError on anything the server could not act on."""
    if not raw or not isinstance(raw[0], str) or len(raw) > 2:
        raise ValueError(f"a fault is (kind,) or (kind, argument), got {tuple(raw)!r}")
    kind, arg = raw[0], (raw[1] if len(raw) == 2 else None)
    seconds = _seconds(arg)
    if kind == "drop" and arg is None:
        return _Fault(kind)
    if kind == "slow" and seconds is not None:
        return _Fault(kind, seconds)
    if kind == "malformed" and (arg is None or arg in MALFORMED_KINDS):
        return _Fault(kind, "json" if arg is None else str(arg))
    if kind == "429" and (arg is None or seconds is not None or isinstance(arg, str)):
        # A string is sent verbatim: an HTTP date, or junk the client must survive.
        return _Fault(kind, arg if isinstance(arg, str) else seconds)
    if kind.isdigit() and 400 <= int(kind) <= 599 and arg is None:
        return _Fault(kind)
    raise ValueError(f"unknown or ill-formed fault {tuple(raw)!r}")


def _seconds(value: object) -> float | None:
    """`value` as a finite, non-negative number of seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _column_ok(name: object) -> bool:
    return isinstance(name, str) and bool(name) and not set(name) & set(',"\r\n')


def _result_csv(metrics: Mapping[str, float], steps: int = 10) -> str:
    """OpenAI-like step metrics: losses fall, accuracies rise; validation columns only on even
    steps (OpenAI leaves them empty between evaluations); the last row is exactly `metrics`."""
    names = list(metrics)
    lines = [",".join(["step", *names])]
    for step in range(1, steps + 1):
        left = (steps - step) / steps
        cells = [str(step)]
        for name in names:
            final = float(metrics[name])
            if step == steps:
                cells.append(repr(final))
            elif name.startswith("valid") and step % 2:
                cells.append("")
            else:
                earlier = final * (1 + 2 * left) if "loss" in name else final * (1 - 0.4 * left)
                cells.append(f"{earlier:.5f}")
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def _job_body(job: _Job, status: str) -> dict[str, Any]:
    succeeded = status == "succeeded"
    hyperparameters = {"batch_size": 4, "learning_rate_multiplier": 1.8, "n_epochs": 3}
    return {
        "object": "fine_tuning.job",
        "id": job.job_id,
        "model": job.model,
        "created_at": job.created_at,
        "finished_at": job.created_at + 3000 if status in TERMINAL_STATUSES else None,
        "fine_tuned_model": job.fine_tuned_model if succeeded else None,
        "organization_id": "org-fake0000000000000000",
        "result_files": [job.file_id] if succeeded else [],
        "status": status,
        "validation_file": f"file-valid{job.suffix}",
        "training_file": f"file-train{job.suffix}",
        "hyperparameters": hyperparameters,
        "trained_tokens": job.trained_tokens if succeeded else None,
        "error": dict(job.error) if status == "failed" else None,
        "user_provided_suffix": None,
        "seed": int(job.suffix, 16) % 2**31,
        "estimated_finish": None,
        "integrations": [],
        "metadata": {"tenant": job.tenant} if job.tenant is not None else None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    }


def _error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind, code, text = _ERROR_TEXT.get(status, _SERVER_ERROR if status >= 500 else _ERROR_TEXT[400])
    return {"error": {"message": message or text, "type": kind, "param": None, "code": code}}


def _masked(token: str) -> str:
    # OpenAI echoes a masked key in 401s; mimic it so clients are tested against that shape.
    return token[:3] + "*" * 12 + token[-4:] if len(token) > 12 else "*" * 8


class FakeOpenAI:
    """A fake OpenAI server: `with FakeOpenAI() as fake: OpenAI(base_url=fake.base_url, …)`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._files: dict[str, str] = {}  # result file id -> job id
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        """Binds and serves in a daemon thread; returns self. Idempotent; restartable."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self._host, self._port), _Handler)
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
        if not isinstance(job_id, str) or not _ID_RE.fullmatch(job_id):
            raise ValueError(f"job_id must match {_ID_RE.pattern}, got {job_id!r}")
        statuses = tuple(statuses)
        if not statuses or any(s not in JOB_STATUSES for s in statuses):
            raise ValueError(f"statuses must be a non-empty sequence of {sorted(JOB_STATUSES)}")
        if isinstance(trained_tokens, bool) or not isinstance(trained_tokens, int):
            raise ValueError("trained_tokens must be an int")
        final = dict(DEFAULT_METRICS if metrics is None else metrics)
        if not all(_column_ok(k) and _finite(v) for k, v in final.items()):
            raise ValueError("metrics must map column names to finite numbers")
        err = dict(DEFAULT_ERROR if error is None else error)
        if not isinstance(err.get("code"), str) or not isinstance(err.get("message"), str):
            raise ValueError("error must have string 'code' and 'message'")
        err.setdefault("param", None)
        # Deterministic per job id, so reruns of a test or the demo see the same model names.
        suffix = format(int(hashlib.sha256(job_id.encode()).hexdigest()[:10], 16), "x")[:8]
        if fine_tuned_model is None:
            fine_tuned_model = f"ft:{model}:acme::{suffix}"
        job = _Job(
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
        checked = [_check_fault(f) for f in faults]
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
    def _arrive(self, job_id: str, *, file: bool) -> tuple[_Job | None, _Fault | None]:
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

    def _advance(self, job: _Job) -> str:
        with self._lock:
            status = job.statuses[min(job.step, len(job.statuses) - 1)]
            job.step += 1
            return status

    def _job_for_file(self, file_id: str) -> str | None:
        with self._lock:
            return self._files.get(file_id)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeOpenAI

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._conn_lock = threading.Lock()
        self._conns: set[socket.socket] = set()

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conn_lock:
            (self._conns.add if alive else self._conns.discard)(conn)

    def close_connections(self) -> None:
        # Kept-alive connections outlive serve_forever; without this a stopped fake keeps
        # answering clients that already hold a connection.
        with self._conn_lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle kept-alive connection gives its thread back
    server_version = "fake-openai"
    # Headers and body leave in one segment: written separately, Nagle's algorithm holds the
    # body until the client's delayed ACK, ~40 ms per request on a kept-alive connection.
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):  # flushing to a client that hung up
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        # Only the request line and status reach here, never headers (so never the API key).
        log.debug("fake_openai %s", format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        try:
            if parts[:1] == ["_fake"]:
                self._admin(method, parts[1:])
            elif self._authorized():
                match (method, *parts):
                    case ("GET", "v1", "fine_tuning", "jobs", job_id):
                        self._get_job(job_id)
                    case ("GET", "v1", "files", file_id, "content"):
                        self._get_file(file_id)
                    case _:
                        message = f"Invalid URL ({method} {self.path})"
                        self._send_json(404, _error_body(404, message))
        except OSError:
            # The client gave up (its timeout is shorter than our slow reply) or stop() shut
            # the connection: there is no one left to answer.
            self.close_connection = True

    # -- OpenAI surface ----------------------------------------------------------------------
    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else ""
        if token:
            return True
        self._send_json(401, _error_body(401, "You didn't provide an API key."))
        return False

    def _get_job(self, job_id: str) -> None:
        job, fault = self.server.fake._arrive(job_id, file=False)
        if job is None:
            self._send_json(404, _error_body(404, f"Could not find fine-tune job: {job_id}."))
            return
        if fault is not None and self._fault(fault, job):
            return
        self._send_json(200, _job_body(job, self.server.fake._advance(job)))

    def _get_file(self, file_id: str) -> None:
        job_id = self.server.fake._job_for_file(file_id)
        job, fault = self.server.fake._arrive(job_id, file=True) if job_id else (None, None)
        if job is None:
            self._send_json(404, _error_body(404, f"No such File object: {file_id}"))
            return
        if fault is not None and self._fault(fault, job):
            return
        body = _result_csv(job.metrics).encode()
        self._send(200, body, "application/octet-stream")

    def _fault(self, fault: _Fault, job: _Job) -> bool:
        """Acts on a fault; True when it answered (or dropped) the request itself."""
        if fault.kind == "slow":
            # Waking on stop keeps `stop()` prompt while a test's client has long given up.
            self.server.fake._stopping.wait(float(fault.arg or 0))
            return False
        if fault.kind == "drop":
            self.close_connection = True
            return True
        if fault.kind == "malformed":
            self._malformed(str(fault.arg), job)
            return True
        status = int(fault.kind)
        headers: dict[str, str] = {}
        if status == 429 and fault.arg is not None:
            if isinstance(fault.arg, str):
                headers["Retry-After"] = fault.arg
            else:
                headers["Retry-After"] = str(math.ceil(fault.arg))
                if fault.arg != int(fault.arg):
                    headers["retry-after-ms"] = str(round(fault.arg * 1000))
        message = None
        if status == 401:
            token = self.headers.get("Authorization", "")[len("Bearer ") :].strip()
            message = _ERROR_TEXT[401][2].format(key=_masked(token))
        self._send_json(status, _error_body(status, message), headers)
        return True

    def _malformed(self, kind: str, job: _Job) -> None:
        if kind == "text":
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            self._send(200, page, "text/html")
        elif kind == "shape":
            self._send_json(200, {"object": "list", "data": [], "has_more": False})
        elif kind in ("id", "status"):
            body = _job_body(job, job.statuses[-1])
            if kind == "id":
                body["id"] = "ftjob-someoneelse"
            else:
                body["status"] = "paused"
            self._send_json(200, body)
        else:  # a JSON content type over a truncated body: the SDK's JSON parser raises
            self._send(200, b'{"object": "fine_tuning.job", "id": ', "application/json")

    # -- admin surface -----------------------------------------------------------------------
    def _admin(self, method: str, parts: list[str]) -> None:
        fake = self.server.fake
        try:
            match (method, *parts):
                case ("POST", "jobs"):
                    args = self._read_json()
                    if not isinstance(args, dict):
                        raise ValueError("expected a JSON object of add_job arguments")
                    file_id = fake.add_job(**args)
                    self._send_json(201, {"job_id": args["job_id"], "result_file": file_id})
                case ("POST", "jobs", job_id, "faults"):
                    body = self._read_json()
                    faults = body.get("faults") if isinstance(body, dict) else None
                    if not isinstance(faults, list) or not all(isinstance(f, list) for f in faults):
                        raise ValueError('expected {"faults": [["429", 2], ["500"], ...]}')
                    fake.inject(job_id, *(tuple(f) for f in faults))
                    self._send_json(200, {"pending_faults": fake.pending_faults(job_id)})
                case ("GET", "jobs", job_id):
                    counts = {
                        "job_id": job_id,
                        "requests": fake.requests(job_id),
                        "file_requests": fake.file_requests(job_id),
                        "pending_faults": fake.pending_faults(job_id),
                    }
                    self._send_json(200, counts)
                case _:
                    route = f"{method} /_fake/{'/'.join(parts)}"
                    self._send_json(404, {"error": f"no admin route {route}"})
        except KeyError as exc:
            self._send_json(404, {"error": f"unknown job {exc.args[0]!r}"})
        except (TypeError, ValueError) as exc:
            self._send_json(400, {"error": str(exc)})

    def _read_json(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= _MAX_ADMIN_BODY:
            raise ValueError(f"body must be 1..{_MAX_ADMIN_BODY} bytes of JSON")
        return json.loads(self.rfile.read(length))

    # -- wire --------------------------------------------------------------------------------
    def _send_json(
        self, status: int, body: object, headers: Mapping[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()  # here, where a client that hung up is handled


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the fake in the foreground until SIGINT/SIGTERM; prints its base URL first."""
    parser = argparse.ArgumentParser(prog="python -m worker.demo.fake_openai", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with FakeOpenAI(args.host, args.port) as fake:
        # The line a parent process waits for: the server is accepting once it is printed.
        print(f"fake OpenAI listening on {fake.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
