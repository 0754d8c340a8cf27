"""The HTTP API with the broker down: a promotion, a finished job and an evaluation are recorded
all the same and answered as such, each saying that its message did not reach the broker yet
(`enqueued: false`), so a serving app or a pipeline knows the reconciler still has to send it.
The answers a real `ftdeploy serve` gives, with its broker URL pointing where nothing listens."""

from __future__ import annotations

from pathlib import Path

import httpx2
from sqlalchemy import select

from registry import deployments, keys
from registry.db import unit_of_work
from registry.jobs import events
from registry.models import Evaluation, FinetuningRun, OperationStatus
from registry.operations import get_operation
from tests.factories import deploy_new, make_run, make_tenant
from tests.harness import worker_env
from tests.server_process import free_port
from tests.worker.api_stack import ApiServer


def _seed(url: str) -> tuple[str, str]:
    """A canary tenant (v1:90% v2:10%), a tenant whose run waits for an evaluation, and an
    `operate` key; returns the key and the waiting job's id."""
    with unit_of_work(url) as session:
        canary = make_tenant(
            session, "acme", strategy="canary", canary_percent=10, require_evaluation=False
        )
        deploy_new(session, canary)
        deploy_new(session, canary)
        waiting = make_tenant(session, "beta", require_evaluation=True)
        job = make_run(session, waiting)
        deployments.deploy(session, waiting.id, job.id)
        _, clear = keys.create_key(session, "pipeline", "operate", [])
    return clear, job.openai_job_id


def test_requests_are_recorded_and_say_they_are_not_yet_sent(pg_url: str, tmp_path: Path) -> None:
    key, waiting_job = _seed(pg_url)
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = worker_env(
        database_url=pg_url,
        broker_url=dead_broker,
        openai_base_url=f"http://127.0.0.1:{free_port()}/v1",
        data_dir=tmp_path / "data",
    )
    headers = {"Authorization": f"Bearer {key}"}
    with ApiServer(env, tmp_path / "api.log") as server:
        client = httpx2.Client(base_url=server.url, headers=headers, timeout=60)
        promoted = client.post(
            "/v1/tenants/acme/promote", json={"version": 2, "traffic_percent": 30}
        )
        job = client.post("/v1/jobs/ftjob-new1/finished", json={"tenant": "acme"})
        evaluated = client.post(
            f"/v1/jobs/{waiting_job}/evaluation", json={"recommendation": "approve"}
        )
        quiet = client.post(
            f"/v1/jobs/{waiting_job}/evaluation",
            json={"recommendation": "approve", "resume": False},
        )
        operation_id = promoted.json()["operation_id"]
        looked_up = client.get(f"/v1/operations/{operation_id}")
        log = server.log()

    assert promoted.status_code == 202, promoted.text
    assert (promoted.json()["status"], promoted.json()["enqueued"]) == ("queued", False)
    assert looked_up.json()["enqueued"] is False
    assert job.status_code == 202, job.text
    assert (job.json()["queued"], job.json()["enqueued"]) == (True, False)
    assert evaluated.status_code == 201, evaluated.text
    assert evaluated.json()["resume_enqueued"] is False
    assert quiet.status_code == 201 and quiet.json()["resume_enqueued"] is None
    # One line per unsent message, naming no host, port or credential of the broker.
    assert log.count("message.unsent") == 3, log
    assert dead_broker.split("//")[1].split("/")[0] not in log and "Traceback" not in log

    # Each is recorded and waits for the reconciler, unsent.
    with unit_of_work(pg_url) as session:
        operation = get_operation(session, operation_id)
        assert operation.status == OperationStatus.QUEUED and operation.enqueued_at is None
        event = events.find_event(session, "ftjob-new1")
        assert event is not None and event.enqueued_at is None
        resumes = session.scalars(
            select(Evaluation)
            .join(FinetuningRun, FinetuningRun.id == Evaluation.run_id)
            .where(FinetuningRun.openai_job_id == waiting_job)
            .order_by(Evaluation.created_at)
        ).all()
        assert [e.resume_requested_at is not None for e in resumes] == [True, False]
        assert all(e.resume_sent_at is None for e in resumes)
