"""Issue 10, an evaluation's resume at the CLI: with the broker down, `evaluation record` prints
one line (the evaluation is recorded, its resume not sent) and exits 6, and once the broker is
back the reconciler sends the resume; `--no-resume` asks for nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
import redis

from registry import deployments
from registry.db import unit_of_work
from registry.jobs import resumes
from registry.models import DeploymentStatus, Evaluation
from tests.factories import make_run, make_tenant
from tests.worker.cli_support import run
from worker.cli import output


def _waiting_run(url: str) -> str:
    with unit_of_work(url) as session:
        tenant = make_tenant(session, "acme", require_evaluation=True)
        job = make_run(session, tenant)
        result = deployments.deploy(session, tenant.id, job.id)
        assert result.status == DeploymentStatus.AWAITING_EVALUATION
        return job.openai_job_id


def test_item5_broker_down_when_an_evaluation_is_recorded_is_one_line_then_the_reconciler_sends_it(
    pg_url: str, broker_down: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = _waiting_run(pg_url)
    code, out, err = run(capsys, "evaluation", "record", job_id, "--recommendation", "approve")
    assert code == output.NOT_SENT and out == ""
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "broker is unavailable" in err
    assert "reconciler sends its resume when the broker is back" in err
    evaluation_id = uuid.UUID(err.split("evaluation ", 1)[1].split()[0])
    # Without a resume there is nothing to send: recorded, and the command succeeds.
    code, out, err = run(
        capsys, "evaluation", "record", job_id, "--recommendation", "approve",
        "--no-resume", "--json",
    )  # fmt: skip
    assert code == output.OK, err
    quiet = uuid.UUID(json.loads(out)["evaluation_id"])
    with unit_of_work(pg_url) as session:
        stored = session.get_one(Evaluation, evaluation_id)
        assert stored.resume_requested_at is not None and stored.resume_sent_at is None
        assert session.get_one(Evaluation, quiet).resume_requested_at is None

    # The broker is back: beat's reconciler sends it (once past its grace period).
    broker = broker_down()  # brings a broker back
    with unit_of_work(pg_url) as session:
        found = resumes.reconcile(session, grace=timedelta(0), stalled_after=timedelta(hours=2))
    assert found == resumes.Reconciled([evaluation_id], [], [])
    with unit_of_work(pg_url) as session:
        assert session.get_one(Evaluation, evaluation_id).resume_sent_at is not None
    queued = redis.Redis.from_url(broker).lrange("ftdeploy", 0, -1)
    assert len(queued) == 1 and str(evaluation_id).encode() in queued[0]
    assert b"ftdeploy.evaluation_recorded" in queued[0]
