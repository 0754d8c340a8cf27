"""The TypeScript client against the real thing: `ftdeploy serve` on loopback over PostgreSQL,
Redis and a Celery worker with beat, driven by `clients/typescript/test-e2e/client_e2e.mjs`.

The Node script checks, and reports as JSON: (a) its local picks match the server's `/resolve`
for a few hundred subjects of every kind; (b) after `ftdeploy promote … --wait` its answers change
within the serving plane's propagation bound (1 s), measured from the audit event's write, and
subjects move only toward the promoted version; (d) outcomes it records and flushes take a canary
through beat's real auto-promotion sweep to 100%; (c) with the server SIGKILLed it keeps answering
with the last documents and reports `stale`. This side owns the stack and does what the script
asks for (`{"ask": …}` lines on its stdout, answered on its stdin).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from registry import versions
from registry.db import unit_of_work
from registry.models import Tenant, TrafficEvent
from tests.clients.node import CLIENT, NODE, built_client
from tests.factories import deploy_new, make_tenant
from tests.harness import FTDEPLOY
from tests.worker.api_stack import ApiServer, ApiStack, add_tenant
from tests.worker.e2e_stack import e2e_stack

pytestmark = pytest.mark.e2e

SCRIPT = CLIENT / "test-e2e" / "client_e2e.mjs"
CANARY_POLICY: dict[str, Any] = dict(
    strategy="canary",
    canary_steps=(10, 50, 100),
    auto_promote=True,
    auto_promote_threshold=0.9,
    min_samples=20,
    bake_seconds=1,
    progress_deadline_seconds=120,
)


@pytest.fixture(scope="module")
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiStack]:
    if NODE is None:
        pytest.skip("node is not installed: the TypeScript client's end-to-end test needs it")
    built_client()
    tmp = tmp_path_factory.mktemp("ts-e2e")
    with e2e_stack(request, tmp, outcome_bucket_seconds=1, stream_heartbeat_seconds=1) as stack:
        stack.start_worker("w1", beat=True)  # beat: the auto-promotion sweep every second
        server = ApiServer(stack.env, tmp / "api.log").start()
        try:
            yield ApiStack(stack, server)
        finally:
            server.stop()


def _written_at(slug: str) -> datetime:
    """When the tenant's newest traffic change was written, in its transaction (so before the
    commit): a propagation measured from it includes the commit."""
    with unit_of_work() as session:
        return session.scalars(
            select(TrafficEvent.created_at)
            .join(Tenant, Tenant.id == TrafficEvent.tenant_id)
            .where(Tenant.slug == slug)
            .order_by(TrafficEvent.id.desc())
            .limit(1)
        ).one()


def _promote(api: ApiStack, ask: dict[str, Any]) -> dict[str, Any]:
    argv = [str(FTDEPLOY), "promote", ask["tenant"], str(ask["version"])]
    argv += ["--traffic", str(ask["traffic"]), "--wait", "--timeout", "30"]
    done = subprocess.run(argv, env=api.stack.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    returned = time.time()
    return {"written_at": _written_at(ask["tenant"]).timestamp(), "returned_at": returned}


def _kill(api: ApiStack) -> dict[str, Any]:
    process = api.server.process
    assert process is not None
    killed = time.time()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
    return {"killed_at": killed}


def test_the_typescript_client_against_a_real_server(api: ApiStack) -> None:
    add_tenant("ts-split", versions=3)
    with unit_of_work() as session:  # v2 30 / v3 70: a split worth checking subjects against
        versions.promote(session, "ts-split", 2, 30, actor="test")
        tenant = make_tenant(session, "ts-canary", **CANARY_POLICY)
        deploy_new(session, tenant)
        deploy_new(session, tenant)  # v2, a live canary at 10%
    key = api.key("ts-app", "serve", "ts-split", "ts-canary")
    env = {**os.environ, "FTDEPLOY_URL": api.url, "FTDEPLOY_API_KEY": key}
    env |= {"E2E_SPLIT": "ts-split", "E2E_CANARY": "ts-canary"}
    assert NODE is not None
    node = subprocess.Popen(
        [NODE, str(SCRIPT)],
        cwd=CLIENT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert node.stdin is not None and node.stdout is not None
    result: dict[str, Any] | None = None
    try:
        for line in node.stdout:
            message = json.loads(line)
            if "result" in message:
                result = message["result"]
                break
            step = message["ask"]
            answer = _promote(api, message) if step == "promote" else _kill(api)
            node.stdin.write(json.dumps({"done": step, **answer}) + "\n")
            node.stdin.flush()
        status = node.wait(30)
    finally:
        if node.poll() is None:
            node.kill()
    stderr = node.stderr.read() if node.stderr else ""
    assert result is not None, f"the script gave no result (exit {node.returncode}):\n{stderr}"
    print("\nTypeScript client end to end:")
    for name, value in result.items():
        print(f"  {name}: {json.dumps(value)}")
    assert result["ok"] and status == 0, (
        f"failures: {result['failures']}\n{stderr}\n{api.server.log()[-4000:]}"
    )
    assert result["propagation_ms"] < 1000
