"""The fake OpenAI's HTTP side: a threading server that can close its kept-alive connections, and
the handler that answers the SDK's two calls and the `/_fake/…` admin API."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from worker.demo.fake_openai_jobs import (
    ERROR_TEXT,
    MAX_ADMIN_BODY,
    ScriptedFault,
    ScriptedJob,
    error_body,
    job_body,
    masked,
    result_csv,
)

if TYPE_CHECKING:
    from worker.demo.fake_openai import FakeOpenAI

log = logging.getLogger("worker.demo.fake_openai")


class FakeServer(ThreadingHTTPServer):
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


class FakeHandler(BaseHTTPRequestHandler):
    server: FakeServer
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
                        self._send_json(404, error_body(404, message))
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
        self._send_json(401, error_body(401, "You didn't provide an API key."))
        return False

    def _get_job(self, job_id: str) -> None:
        job, fault = self.server.fake._arrive(job_id, file=False)
        if job is None:
            self._send_json(404, error_body(404, f"Could not find fine-tune job: {job_id}."))
            return
        if fault is not None and self._fault(fault, job):
            return
        self._send_json(200, job_body(job, self.server.fake._advance(job)))

    def _get_file(self, file_id: str) -> None:
        job_id = self.server.fake._job_for_file(file_id)
        job, fault = self.server.fake._arrive(job_id, file=True) if job_id else (None, None)
        if job is None:
            self._send_json(404, error_body(404, f"No such File object: {file_id}"))
            return
        if fault is not None and self._fault(fault, job):
            return
        body = result_csv(job.metrics).encode()
        self._send(200, body, "application/octet-stream")

    def _fault(self, fault: ScriptedFault, job: ScriptedJob) -> bool:
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
            message = ERROR_TEXT[401][2].format(key=masked(token))
        self._send_json(status, error_body(status, message), headers)
        return True

    def _malformed(self, kind: str, job: ScriptedJob) -> None:
        if kind == "text":
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            self._send(200, page, "text/html")
        elif kind == "shape":
            self._send_json(200, {"object": "list", "data": [], "has_more": False})
        elif kind in ("id", "status"):
            body = job_body(job, job.statuses[-1])
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
        if not 0 < length <= MAX_ADMIN_BODY:
            raise ValueError(f"body must be 1..{MAX_ADMIN_BODY} bytes of JSON")
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
