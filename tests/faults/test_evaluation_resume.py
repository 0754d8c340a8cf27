"""An evaluation recorded while the broker is down: its resume is kept, and once the broker is
back beat's reconciler sends it, so the waiting deployment goes ahead; an evaluation recorded
with `--no-resume` asks for nothing and its deployment keeps waiting.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from registry import deployments
from registry.db import unit_of_work
from registry.models import Deployment, DeploymentStatus, Evaluation, FinetuningRun
from tests import services
from tests.factories import make_run, make_tenant
from tests.faults.conftest import FaultStack
from tests.worker.cli_support import run
from worker.cli import output

pytestmark = pytest.mark.faults


def _waiting_run(stack: FaultStack, slug: str) -> str:
    """A tenant whose newest run waits for an evaluation (the policy requires one)."""
    with unit_of_work(stack.database_url) as session:
        tenant = make_tenant(session, slug, require_evaluation=True)
        job = make_run(session, tenant)
        result = deployments.deploy(session, tenant.id, job.id)
        assert result.status == DeploymentStatus.AWAITING_EVALUATION
        return job.openai_job_id


def _decided(stack: FaultStack, job_id: str) -> Deployment | None:
    deployment = stack.deployment(job_id)
    assert deployment is not None
    return None if deployment.status == DeploymentStatus.AWAITING_EVALUATION else deployment


def test_broker_down_when_an_evaluation_is_recorded(
    stack_on_own_redis: FaultStack,
    own_redis: services.Service,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack = stack_on_own_redis
    resumed = _waiting_run(stack, "resumed")
    quiet = _waiting_run(stack, "quiet")
    with own_redis.down():
        code, out, err = run(capsys, "evaluation", "record", resumed, "--recommendation", "approve")
        assert code == output.NOT_SENT and out == "" and len(err.splitlines()) == 1, err
        assert "broker is unavailable" in err and "Traceback" not in err
        code, out, err = run(
            capsys, "evaluation", "record", quiet, "--recommendation", "approve", "--no-resume"
        )
        assert (code, err) == (output.OK, ""), (code, err)

    # The broker is back; beat's reconciler finds the resume that was never sent.
    worker = stack.worker("w1", beat=True, env={"FTDEPLOY_RECONCILE_GRACE_SECONDS": "1"})
    done = stack.wait(lambda: _decided(stack, resumed), 45, "the waiting deployment to resume")
    assert done.status == DeploymentStatus.PROMOTED, (done.status, done.reason)
    assert stack.split("resumed") == {1: 100}
    outcome = stack.wait(lambda: _resume_outcome(stack, resumed), 15, "the resume to end")
    assert outcome.startswith("deployment promoted"), outcome

    # A few more reconciler periods: the evaluation recorded without a resume stays unsent.
    time.sleep(4)
    waiting = stack.deployment(quiet)
    assert waiting is not None and waiting.status == DeploymentStatus.AWAITING_EVALUATION
    assert stack.split("quiet") == {}
    assert "resumes.reconciled" in worker.log_path.read_text(errors="replace")
    stack.check()


def _resume_outcome(stack: FaultStack, job_id: str) -> str | None:
    with unit_of_work(stack.database_url) as session:
        return session.scalar(
            select(Evaluation.resume_outcome)
            .join(FinetuningRun, FinetuningRun.id == Evaluation.run_id)
            .where(FinetuningRun.openai_job_id == job_id, Evaluation.resume_ended_at.is_not(None))
        )
