"""The receiver for real under slow clients: a few hundred slowloris connections from this test
(loopback only, bounded in count and time) must not keep a signed delivery from being answered
quickly, must be closed by the receiver's deadlines, and must not flood its log."""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path

import httpx2
import pytest

from tests.harness import HttpServer, worker_env
from tests.worker.webhook_signing import job_event, new_secret, sign

pytestmark = pytest.mark.e2e

SLOW_CLIENTS = 300
# Below SLOW_CLIENTS: without raising its own limit the receiver runs out of descriptors.
RECEIVER_SOFT_NOFILE = 256
MAX_LOG_BYTES = 200_000


def _low_open_files_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (RECEIVER_SOFT_NOFILE, hard))


def _slow_client(port: int, index: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if index % 2:
        # Whole headers, then no body.
        sock.sendall(
            b"POST /webhooks/openai HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
    else:
        # Half a request head, never finished.
        sock.sendall(b"POST /webhooks/openai HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    return sock


def _closed_by_server(sock: socket.socket, deadline: float) -> bytes | None:
    """What the server sent before closing, or None if it still holds the connection."""
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


def test_receiver_under_slow_clients_answers_a_signed_delivery(
    tmp_path: Path, pg_url: str, broker_url: str
) -> None:
    secret = new_secret()
    env = worker_env(
        database_url=pg_url,
        broker_url=broker_url,
        openai_base_url="http://127.0.0.1:9/v1",
        data_dir=tmp_path / "data",
        webhook_secret=secret,
        webhook_header_timeout_seconds=3,
        webhook_body_timeout_seconds=3,
        webhook_keep_alive_seconds=1,
    )
    log_path = tmp_path / "receiver.log"
    receiver = HttpServer(
        ["webhooks", "serve"], env, log_path, preexec_fn=_low_open_files_limit
    ).start()
    port, url = receiver.port, receiver.url
    slow: list[socket.socket] = []
    try:
        slow = [_slow_client(port, index) for index in range(SLOW_CLIENTS)]
        time.sleep(0.5)  # let the receiver accept them all

        delivery = sign(secret, job_event("ftjob-under-load"), webhook_id="wh_under_load")
        started = time.monotonic()
        answer = httpx2.post(
            f"{url}/webhooks/openai", content=delivery.body, headers=delivery.headers, timeout=10
        )
        elapsed = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "recorded"
        assert elapsed < 2.0, f"a signed delivery took {elapsed:.2f} s under slow clients"

        # Every slow connection is closed by the receiver's deadlines, with a 408 where it had
        # started a request.
        deadline = time.monotonic() + 15
        replies = [_closed_by_server(sock, deadline) for sock in slow]
        assert all(reply is not None for reply in replies), "slow clients were never closed"
        assert all(b" 408 " in (reply or b"") for reply in replies), {
            (reply or b"")[:40] for reply in replies
        }
        text = log_path.read_text(errors="replace")
        assert log_path.stat().st_size < MAX_LOG_BYTES, f"log grew to {log_path.stat().st_size}"
        assert "Too many open files" not in text and "Traceback" not in text, text[-3000:]
    finally:
        for sock in slow:
            sock.close()
        receiver.stop()
