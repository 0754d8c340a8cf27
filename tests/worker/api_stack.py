"""The HTTP API for real: `ftdeploy serve` (uvicorn) in its own process on loopback, over the
module's end-to-end stack (PostgreSQL, Redis, a Celery worker, the fake OpenAI), with tenants
and keys made through the registry as an operator would."""

from __future__ import annotations

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
from tests.harness import HttpServer
from tests.worker.e2e_stack import Stack, e2e_stack


class ApiServer(HttpServer):
    """`ftdeploy serve`: the HTTP API, in its own process group, logging to a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        super().__init__(["serve"], env, log_path)

    def start(self, timeout: float = 30.0) -> ApiServer:
        super().start(timeout)
        return self


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
