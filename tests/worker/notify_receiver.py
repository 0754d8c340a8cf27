"""A receiving HTTP server on loopback for the notification tests: verifies every request with
the `standardwebhooks` library (independent of the code under test) and keeps what came.

Its answers are scripted: `answer(500, 500)` answers the next two requests with 500, then 200;
`hang()` never answers (until the server stops); `gone()` answers 410. It holds its port from
the start but listens only from `start()`: until then connections are refused (a receiver that
is down).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass(frozen=True)
class Received:
    webhook_id: str | None
    verified: bool
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def type(self) -> str:
        return str(self.body.get("type"))

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.body.get("data") or {})


class Receiver:
    def __init__(self) -> None:
        self.secret: str | None = None
        self.requests: list[Received] = []
        self._script: list[int] = []
        self._mode = "ok"
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.daemon_threads = True
        self.server.server_bind()
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/ftdeploy"
        self._thread: threading.Thread | None = None

    # -- behaviour ------------------------------------------------------------------------------
    def answer(self, *codes: int) -> None:
        with self._lock:
            self._script = list(codes)
            self._mode = "ok"

    def hang(self) -> None:
        self._mode = "hang"

    def gone(self) -> None:
        self._mode = "gone"

    def start(self) -> Receiver:
        self.server.server_activate()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self.server.shutdown()
        self.server.server_close()

    # -- what came ------------------------------------------------------------------------------
    def verified(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.verified]

    def unique(self) -> list[Received]:
        """Verified requests, deduplicated on webhook-id as a receiver should (first kept)."""
        seen: set[str | None] = set()
        out = []
        for request in self.verified():
            if request.webhook_id not in seen:
                seen.add(request.webhook_id)
                out.append(request)
        return out

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        verified = False
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(raw, headers)
                verified = True
            except Exception:
                verified = False
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        with self._lock:
            self.requests.append(Received(headers.get("webhook-id"), verified, body, headers))
            mode = self._mode
            code = self._script.pop(0) if self._script else 200
        if mode == "hang":
            self._stopping.wait(120)
            return
        if mode == "gone":
            code = 410
        handler.send_response(code)
        handler.send_header("content-length", "0")
        handler.end_headers()


@contextmanager
def receiver(start: bool = True) -> Iterator[Receiver]:
    server = Receiver()
    if start:
        server.start()
    try:
        yield server
    finally:
        server.stop()
