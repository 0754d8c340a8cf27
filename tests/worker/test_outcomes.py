"""The one outcome mapper of every task: transient errors are retried with backoff, domain errors
fail for good through the task's recorder, bugs are recorded and raised."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from registry.errors import JobNotFinished, TenantNotFound, UpstreamTransient
from worker import outcomes
from worker.outcomes import Failure, Policy


class Retried(Exception):
    def __init__(self, countdown: float) -> None:
        self.countdown = countdown


class FakeTask:
    name = "ftdeploy.test"

    def __init__(self, retries: int = 0) -> None:
        self.request = SimpleNamespace(retries=retries)

    def retry(self, countdown: float, exc: BaseException) -> Exception:
        return Retried(countdown)


def _policy(seen: list[Failure], **options: Any) -> Policy:
    def failed(failure: Failure) -> dict[str, Any]:
        seen.append(failure)
        return {"status": "failed", "reason": failure.reason}

    return Policy(failed=failed, max_retries=3, **options)


def _raise(error: BaseException) -> Any:
    def body(*args: Any) -> dict[str, Any]:
        raise error

    return body


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        SoftTimeLimitExceeded(),
        OperationalError("SELECT 1", {}, SoftTimeLimitExceeded()),
        UpstreamTransient("ftjob-1", "429", retry_after=2.0),
        JobNotFinished("ftjob-1", "running"),
    ],
)
def test_transient_errors_are_retried_with_backoff(error: BaseException) -> None:
    seen: list[Failure] = []
    retried: list[Failure] = []
    policy = _policy(seen, before_retry=retried.append)
    with pytest.raises(Retried) as raised:
        outcomes.run(FakeTask(), policy, _raise(error), "ftjob-1")  # type: ignore[arg-type]
    assert raised.value.countdown > 0
    assert seen == [] and len(retried) == 1 and retried[0].args == ("ftjob-1",)


def test_retry_after_is_honoured() -> None:
    policy = _policy([])
    with pytest.raises(Retried) as raised:
        error = UpstreamTransient("ftjob-1", "429", retry_after=7.0)
        outcomes.run(FakeTask(), policy, _raise(error))  # type: ignore[arg-type]
    assert raised.value.countdown >= 7.0


def test_a_transient_error_past_the_retries_fails_for_good() -> None:
    seen: list[Failure] = []
    error = OperationalError("SELECT 1", {}, Exception("down"))
    result = outcomes.run(FakeTask(retries=3), _policy(seen), _raise(error))  # type: ignore[arg-type]
    assert result["status"] == "failed"
    assert seen[0].reason.startswith("gave up after 4 attempts: ")


def test_a_domain_error_fails_for_good_at_once() -> None:
    seen: list[Failure] = []
    result = outcomes.run(
        FakeTask(),  # type: ignore[arg-type]
        _policy(seen),
        _raise(TenantNotFound("nobody")),
        "ftjob-1",
    )
    assert result == {"status": "failed", "reason": "tenant not found: 'nobody'"}
    assert not seen[0].internal and seen[0].args == ("ftjob-1",)


def test_an_excluded_error_is_not_retried() -> None:
    seen: list[Failure] = []
    policy = _policy(seen, exclude=(JobNotFinished,))
    error = JobNotFinished("ftjob-1", "running")
    outcomes.run(FakeTask(), policy, _raise(error))  # type: ignore[arg-type]
    assert seen[0].reason == "job ftjob-1 is still running"


def test_a_bug_is_recorded_then_raised() -> None:
    seen: list[Failure] = []
    with pytest.raises(ZeroDivisionError):
        outcomes.run(FakeTask(), _policy(seen), _raise(ZeroDivisionError("oops")))  # type: ignore[arg-type]
    assert seen[0].internal and seen[0].reason == "internal error: ZeroDivisionError: oops"


def test_done_is_the_bodys_result() -> None:
    result = outcomes.run(FakeTask(), _policy([]), lambda x: {"status": "done", "x": x}, 1)  # type: ignore[arg-type]
    assert result == {"status": "done", "x": 1}


def test_every_task_runs_through_the_mapper() -> None:
    """The tasks of the contract go through `outcomes.run` (their bodies are the `_…` helpers)."""
    import inspect

    from worker import tasks

    for task in (
        tasks.job_finished,
        tasks.evaluation_recorded,
        tasks.promote,
        tasks.rollback,
        tasks.record_outcomes,
    ):
        assert "task_outcomes.run(" in inspect.getsource(task.run), task.name


def test_the_registrys_message_names_are_the_workers_tasks() -> None:
    from registry import messages
    from worker import tasks  # noqa: F401  (registers them)
    from worker.app import app

    for name in (
        messages.JOB_FINISHED,
        messages.EVALUATION_RECORDED,
        messages.PROMOTE,
        messages.ROLLBACK,
    ):
        assert name in app.tasks, name


def test_an_operations_transient_error_is_retried_then_ends_failed(
    cli_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry import operations
    from registry.db import unit_of_work
    from registry.models import OperationKind, OperationStatus
    from registry.operations import running
    from tests.factories import deploy_new, make_tenant
    from worker import tasks

    with unit_of_work(cli_db) as session:
        tenant = make_tenant(session, "acme")
        deploy_new(session, tenant)
        operation_id = str(operations.queue_operation(session, "acme", "rollback").id)

    def flaky(*args: Any, **kwargs: Any) -> Any:
        raise UpstreamTransient("-", "the database of a dependency is away")

    monkeypatch.setattr(running, "rollback", flaky)
    arguments = (OperationKind.ROLLBACK, "acme", operation_id)
    with pytest.raises(Retried):
        outcomes.run(FakeTask(), tasks.OPERATIONS, tasks._run_operation, *arguments)  # type: ignore[arg-type]
    with unit_of_work(cli_db) as session:
        assert operations.get_operation(session, operation_id).status == OperationStatus.QUEUED
    result = outcomes.run(FakeTask(retries=10), tasks.OPERATIONS, tasks._run_operation, *arguments)  # type: ignore[arg-type]
    assert result["status"] == "failed" and "gave up after 11 attempts" in result["error"]
    with unit_of_work(cli_db) as session:
        operation = operations.get_operation(session, operation_id)
        assert operation.status == OperationStatus.FAILED
        assert operation.error is not None and "gave up" in operation.error
