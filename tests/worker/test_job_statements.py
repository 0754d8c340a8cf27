"""The SQL statements one `job_finished` event costs, counted on PostgreSQL through the real task
(its two units of work, the openai SDK against the fake OpenAI): a change that adds round trips
to the job-finished path fails here, not only in the benchmark."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.db import session_factory, unit_of_work
from tests.factories import make_tenant
from tests.harness import reset_settings, use_env, worker_env
from tests.statements import recorded_statements
from worker.demo.fake_openai import FakeOpenAI

# Per event, both units of work (the attempt's, then the deploying one). A fresh event of a tenant
# that already serves a version; a redelivery of an event already done.
FRESH_IMMEDIATE = 9
FRESH_CANARY = 9
REDELIVERED = 6


@pytest.fixture
def job_env(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    from worker import tasks

    with FakeOpenAI() as fake:
        env = worker_env(
            database_url=pg_url,
            broker_url="redis://127.0.0.1:9/0",  # nothing is sent: no notification endpoints
            openai_base_url=fake.base_url,
            data_dir=tmp_path / "data",
        )
        use_env(env, monkeypatch)
        tasks.openai_client.cache_clear()
        yield fake
    tasks.openai_client.cache_clear()
    reset_settings()


def _statements(job_id: str) -> tuple[dict[str, Any], list[str]]:
    from worker import tasks

    with recorded_statements(session_factory().kw["bind"]) as seen:
        result = tasks.job_finished.apply(args=(job_id,)).get()
    return result, [statement for statement, _ in seen]


@pytest.mark.parametrize(
    ("policy", "fresh", "outcome"),
    [
        ({}, FRESH_IMMEDIATE, "deployment promoted: v2 immediate at 100%"),
        (
            {"strategy": "canary", "canary_steps": (10, 50, 100)},
            FRESH_CANARY,
            "deployment active: v2 canary at 10%",
        ),
    ],
    ids=["immediate", "canary"],
)
def test_statements_per_job_finished(
    job_env: FakeOpenAI, policy: dict[str, Any], fresh: int, outcome: str
) -> None:
    with unit_of_work() as session:
        make_tenant(session, "acme", require_evaluation=False, **policy)
    for n in (1, 2):
        job_env.add_job(f"ftjob-count{n}", tenant="acme")
    _statements("ftjob-count1")  # v1: nothing served before it

    result, statements = _statements("ftjob-count2")
    assert result["outcome"] == outcome
    assert len(statements) == fresh, "\n".join(statements)

    again, statements = _statements("ftjob-count2")
    assert again["outcome"].startswith("already handled")
    assert len(statements) == REDELIVERED, "\n".join(statements)
