"""The HTTP API for real: `ftdeploy serve` (uvicorn) in its own process on loopback, over the
module's end-to-end stack (PostgreSQL, Redis, a Celery worker, the fake OpenAI), with tenants
and keys made through the registry as an operator would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from registry import keys
from registry.db import unit_of_work
from tests.factories import deploy_new, make_tenant
from tests.harness import REPO, wait_for
from tests.worker.e2e_stack import Stack, e2e_stack

FTDEPLOY = Path(sys.executable).with_name("ftdeploy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ApiServer:
    """`ftdeploy serve` in its own process group, logging to a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ApiServer:
        argv = [str(FTDEPLOY), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"server exited; log:\n{self.log()}")
            try:
                return httpx2.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx2.HTTPError:
                return False

        wait_for(healthy, 30, f"server did not become healthy; log:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@dataclass
class ApiStack:
    stack: Stack
    server: ApiServer
    keys: dict[str, str] = field(default_factory=dict)  # name -> key

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, key: str | None) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {self.keys.get(key, key)}"} if key else {}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=15)

    def key(self, name: str, role: str, *tenants: str) -> str:
        with unit_of_work() as session:
            _, clear = keys.create_key(session, name, role, list(tenants))
        self.keys[name] = clear
        return clear


def add_tenant(slug: str, versions: int = 1, **policy: Any) -> None:
    """A tenant whose versions deploy at once (v1 … vN, the newest at 100%)."""
    with unit_of_work() as session:
        tenant = make_tenant(session, slug, require_evaluation=False, **policy)
        for _ in range(versions):
            deploy_new(session, tenant, recommendation=None)


@contextmanager
def api_stack(request: pytest.FixtureRequest, tmp: Path, **settings: Any) -> Iterator[ApiStack]:
    with e2e_stack(request, tmp, **settings) as stack:
        stack.start_worker()
        server = ApiServer(stack.env, tmp / "api.log").start()
        try:
            yield ApiStack(stack, server)
        finally:
            server.stop()
