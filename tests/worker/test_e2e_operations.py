"""Issue 10, operations end to end with a real Celery worker over Redis and PostgreSQL: the
operator's promote that timed out while the worker was down, then a rollback, is not applied
when the worker returns (it ends stale); a crafted message naming another tenant's operation is
refused; a forced operation runs on the split it finds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from registry import operations, versions
from registry.db import unit_of_work
from registry.models import OperationStatus
from tests.factories import deploy_new, make_tenant
from tests.worker.cli_support import ok_json, run
from tests.worker.e2e_stack import Stack, e2e_stack
from worker import app as app_module
from worker.cli import output

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    with e2e_stack(request, tmp_path) as stack:
        yield stack


def _canary(stack: Stack, slug: str) -> None:
    with unit_of_work(stack.database_url) as session:
        tenant = make_tenant(
            session, slug, strategy="canary", canary_percent=10, require_evaluation=False
        )
        deploy_new(session, tenant)
        deploy_new(session, tenant)


def _ended(stack: Stack, operation_id: str) -> str | None:
    status = stack.operation(operation_id).status
    return status if status not in (OperationStatus.QUEUED, OperationStatus.RUNNING) else None


def test_item1_a_promote_queued_before_a_rollback_is_stale_when_the_worker_returns(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    _canary(stack, "acme")
    _canary(stack, "other")
    # The worker is down: the operator's wait gives up, in one line.
    code, _, err = run(
        capsys, "promote", "acme", "2", "--traffic", "30", "--wait", "--timeout", "1"
    )
    assert code == output.STILL_RUNNING and len(err.splitlines()) == 1
    promote_id = err.split("operation ", 1)[1].split()[0]
    # Then the canary is rolled back as clearly failing (as the sweep would).
    with unit_of_work(stack.database_url) as session:
        acme = versions.list_versions(session, "acme")[0].tenant_id
        versions.rollback(session, acme, actor="auto", reason="canary clearly failing")
    # A crafted message: tenant other's name, acme's queued promotion (queued without a
    # message of its own). Run as asked, it would put v2 back on 30% of acme's traffic.
    with unit_of_work(stack.database_url) as session:
        victim = str(
            operations.queue_operation(session, "acme", "promote", version=2, traffic_percent=30).id
        )
    app_module.app.send_task(
        "ftdeploy.promote",
        kwargs={"tenant": "other", "version": 2, "traffic_percent": 30, "operation_id": victim},
    )
    # A forced rollback of other, queued on a split that then changes.
    forced = ok_json(capsys, "rollback", "other", "--force")
    assert isinstance(forced, dict)
    with unit_of_work(stack.database_url) as session:
        other = versions.list_versions(session, "other")[0].tenant_id
        versions.promote(session, other, 2, 50, actor="bob")

    stack.start_worker()

    assert stack.wait(lambda: _ended(stack, promote_id), 60, "the promote to end") == "stale"
    stale = stack.operation(promote_id)
    assert stale.error is not None and "v1:90% v2:10% -> v1:100%" in stale.error
    assert stack.wait(lambda: _ended(stack, forced["operation_id"]), 60, "forced") == "succeeded"
    assert stack.split("other") == {1: 100}
    # The operation the crafted message named is refused; acme keeps the rollback's split.
    refused = stack.wait(lambda: _ended(stack, victim), 60, "the refusal")
    assert refused == "failed"
    error = stack.operation(victim).error
    assert error is not None and error.startswith("refused: ") and "'other'" in error
    assert stack.split("acme") == {1: 100}
