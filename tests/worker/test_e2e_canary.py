"""Auto-promotion end to end: real Celery workers with beat (a sweep every second) over Redis and
PostgreSQL, fed outcomes the way a serving app would (resolve a model per request, report how it
went), through the Celery task and through the in-process recorder.

Every test here runs under TWO beats at once (two workers, each with -B and its own schedule
file), so every sweep may overlap another; each checks in the audit trail that every decision was
applied exactly once. Policies use a 1 s bake and 1 s outcome buckets, so a step takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from registry import versions
from registry.canary.recorder import OutcomeRecorder
from registry.db import session_factory, unit_of_work
from registry.models import Deployment, ModelVersion, Tenant, TrafficEvent
from registry.routing import Router
from tests.factories import deploy_new, make_tenant
from tests.harness import WorkerProcess
from tests.worker.e2e_stack import Stack, e2e_stack
from worker import cli, tasks

pytestmark = pytest.mark.e2e

POLICY: dict[str, Any] = dict(
    strategy="canary",
    canary_steps=(10, 25, 50, 100),
    auto_promote=True,
    auto_promote_threshold=0.9,
    min_samples=20,
    bake_seconds=1,
    progress_deadline_seconds=60,
)


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("canary")
    with e2e_stack(
        request, tmp, outcome_bucket_seconds=1, metrics_port=0, log_json="true"
    ) as stack:
        stack.start_worker("w1", beat=True)
        stack.start_worker("w2", beat=True)
        yield stack


def canary(stack: Stack, slug: str, **policy: Any) -> dict[int, str]:
    """v1 serving, v2 a live canary at 10%; returns {version: model id}."""
    with unit_of_work(stack.database_url) as session:
        tenant = make_tenant(session, slug, **(POLICY | policy))
        deploy_new(session, tenant)
        deploy_new(session, tenant)
        return {v.version: v.model_id for v in versions.list_versions(session, tenant.id)}


class Traffic:
    """The serving app, in a thread: picks a model per request as the split says and reports
    each outcome, every 50 ms, until stopped."""

    def __init__(
        self, slug: str, succeeds: Callable[[str], bool], send: Callable[[Counter[Any]], None]
    ) -> None:
        self.slug, self.succeeds, self.send = slug, succeeds, send
        self.router = Router(session_factory(), staleness=0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            served: Counter[tuple[str, bool]] = Counter()
            for _ in range(40):
                model = self.router.resolve(self.slug)
                if model is not None:
                    served[(model, self.succeeds(model))] += 1
            self.send(served)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def through_the_task(slug: str) -> Callable[[Counter[Any]], None]:
    def send(served: Counter[Any]) -> None:
        batch = [
            {"tenant": slug, "model": model, "success": ok, "count": n}
            for (model, ok), n in served.items()
        ]
        tasks.record_outcomes.apply_async(args=(batch,))

    return send


def through_a_recorder(slug: str, recorder: OutcomeRecorder) -> Callable[[Counter[Any]], None]:
    def send(served: Counter[Any]) -> None:
        for (model, ok), n in served.items():
            recorder.record(slug, model, ok, count=n, latency_ms=random.uniform(50, 500))

    return send


def deployment_status(stack: Stack, slug: str, version: int) -> str:
    with unit_of_work(stack.database_url) as session:
        return session.scalars(
            select(Deployment.status)
            .join(ModelVersion, ModelVersion.id == Deployment.version_id)
            .join(Tenant, Tenant.id == ModelVersion.tenant_id)
            .where(Tenant.slug == slug, ModelVersion.version == version)
        ).one()


def trail(stack: Stack, slug: str) -> list[tuple[str, str, dict[str, int], str]]:
    with unit_of_work(stack.database_url) as session:
        rows = session.execute(
            select(
                TrafficEvent.action,
                TrafficEvent.actor,
                TrafficEvent.split_after,
                TrafficEvent.reason,
            )
            .join(Tenant, Tenant.id == TrafficEvent.tenant_id)
            .where(Tenant.slug == slug)
            .order_by(TrafficEvent.id)
        )
        return [(a, actor, after, reason) for a, actor, after, reason in rows]


def scrape(stack: Stack) -> dict[str, float]:
    """Every worker's /metrics (each found in its JSON log), samples summed across workers."""
    totals: Counter[str] = Counter()
    for worker in stack.workers:
        ports = [
            line["port"]
            for line in json_log_lines(full_log(worker))
            if line.get("event") == "metrics.serving"
        ]
        assert ports, f"{worker.name} is not serving metrics:\n{worker.log()}"
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[-1]}/metrics", timeout=10) as reply:
            body = reply.read().decode()
        for line in body.splitlines():
            matched = re.match(r"^(ftdeploy_\w+)(?:\{(.*)\})? ([0-9.e+-]+)$", line)
            if matched:
                name, labels, value = matched.groups()
                ordered = ",".join(sorted(labels.split(","))) if labels else ""
                totals[f"{name}{{{ordered}}}" if ordered else name] += float(value)
    return dict(totals)


def full_log(worker: WorkerProcess) -> str:
    return worker.log_path.read_text(errors="replace")  # worker.log() is only the tail


def json_log_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
    return lines


def test_a_good_canary_walks_to_100_and_ends_promoted(stack: Stack) -> None:
    canary(stack, "good")
    with Traffic("good", lambda model: True, through_the_task("good")):
        stack.wait(lambda: stack.split("good") == {2: 100}, 60, "the canary to reach 100%")
    assert deployment_status(stack, "good", 2) == "promoted"
    automatic = [(a, actor, after) for a, actor, after, _ in trail(stack, "good")[2:]]
    # Each decision once, though two beats sweep every second.
    assert automatic == [
        ("auto_step", "auto", {"1": 75, "2": 25}),
        ("auto_step", "auto", {"1": 50, "2": 50}),
        ("auto_promote", "auto", {"2": 100}),
    ]
    assert stack.versions("good") == [(1, "deprecated", 0), (2, "production", 100)]

    # Observability: the counters of the pool's child processes, served by each main process.
    metrics = scrape(stack)
    assert metrics.get('ftdeploy_promotions_total{actor="auto"}', 0) >= 3
    assert metrics.get('ftdeploy_canary_decisions_total{action="promote"}', 0) >= 1
    assert metrics.get("ftdeploy_outcomes_recorded_total", 0) > 0
    assert metrics.get("ftdeploy_sweep_duration_seconds_count", 0) > 0
    assert metrics.get('ftdeploy_deployments{status="promoted",strategy="canary"}', 0) >= 1
    # Structured logs: one JSON object per line, with the tenant and version of each change.
    applied = [
        line
        for worker in stack.workers
        for line in json_log_lines(full_log(worker))
        if line.get("event") == "canary.applied" and line.get("tenant") == "good"
    ]
    assert sorted(line["action"] for line in applied) == ["promote", "step", "step"]
    assert {line["version"] for line in applied} == {2}
    # Both beats were scheduling sweeps.
    for worker in stack.workers:
        assert "Sending due task auto-promote-sweep" in full_log(worker)


def test_a_bad_canary_is_rolled_back_automatically(stack: Stack) -> None:
    models = canary(stack, "bad")
    with (
        OutcomeRecorder(session_factory(), bucket_seconds=1, flush_seconds=0.1) as recorder,
        Traffic("bad", lambda model: model != models[2], through_a_recorder("bad", recorder)),
    ):
        stack.wait(lambda: stack.split("bad") == {1: 100}, 60, "the canary to be rolled back")
    assert deployment_status(stack, "bad", 2) == "rolled_back"
    events = trail(stack, "bad")
    assert [(a, actor) for a, actor, _, _ in events[2:]] == [("auto_rollback", "auto")]
    assert "clearly failing" in events[-1][3]


def test_no_traffic_holds_then_rolls_back_at_the_deadline(stack: Stack) -> None:
    canary(stack, "quiet", progress_deadline_seconds=4)
    stack.wait(lambda: stack.split("quiet") == {1: 100}, 30, "the deadline rollback")
    events = trail(stack, "quiet")
    assert [a for a, _, _, _ in events[2:]] == ["auto_rollback"]
    assert "progress deadline of 4 s passed with only 0 of 20 requests" in events[-1][3]


def test_an_operators_rollback_mid_walk_is_never_followed_by_a_promotion(stack: Stack) -> None:
    canary(stack, "halted")
    with Traffic("halted", lambda model: True, through_the_task("halted")):
        stack.wait(lambda: stack.split("halted").get(2) == 25, 60, "the first step")
        assert cli.main(["rollback", "halted", "--wait", "--actor", "alice"]) == 0
        stack.wait(lambda: stack.split("halted") == {1: 100}, 10, "the rollback")
        # Good outcomes keep coming for a few sweeps: nothing may promote v2 again.
        threading.Event().wait(3)
    actions = [(a, actor) for a, actor, _, _ in trail(stack, "halted")[2:]]
    assert actions == [("auto_step", "auto"), ("rollback", "operator:alice")]
    assert deployment_status(stack, "halted", 2) == "rolled_back"
    assert stack.split("halted") == {1: 100}


def test_worker_logs_are_json_lines(stack: Stack, tmp_path: Path) -> None:
    lines = json_log_lines(full_log(stack.workers[0]))
    assert lines and all({"time", "level", "event"} <= set(line) for line in lines)
