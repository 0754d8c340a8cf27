"""One event through a real worker over Redis, PostgreSQL and the fake OpenAI."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import versions
from registry.db import unit_of_work
from registry.jobs.events import find_event
from registry.models import EventState
from tests.harness import running_worker, wait_for
from worker import cli
from worker.demo.fake_openai import FakeOpenAI

pytestmark = pytest.mark.e2e


def test_job_finished_deploys_immediately(
    e2e_env: dict[str, str], fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    assert cli.main(["tenant", "add", "acme", "--no-require-evaluation"]) == 0
    fake_openai.add_job("ftjob-smoke1", statuses=("running", "running", "succeeded"), tenant="acme")
    with running_worker(e2e_env, tmp_path):
        assert cli.main(["job-finished", "ftjob-smoke1"]) == 0

        def done() -> bool:
            with unit_of_work() as session:
                event = find_event(session, "ftjob-smoke1")
                return event is not None and event.state == EventState.DONE

        wait_for(done, 30)
    with unit_of_work() as session:
        rows = versions.list_versions(session, "acme")
        assert [(v.version, v.status, v.traffic_percent) for v in rows] == [(1, "production", 100)]
    assert fake_openai.requests("ftjob-smoke1") == 3
