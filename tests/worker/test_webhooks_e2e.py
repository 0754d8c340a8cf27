"""The receiver for real: `ftdeploy webhooks serve` (uvicorn) in its own process, a real Celery
worker over Redis, PostgreSQL and the fake OpenAI; deliveries signed by `standardwebhooks`."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
import redis
from sqlalchemy import func, select

from registry import audit, versions
from registry.db import unit_of_work
from registry.jobs.events import find_event
from registry.models import EventState, WebhookDelivery
from tests.harness import HttpServer, running_worker, wait_for
from tests.worker.webhook_signing import Delivery, job_event, new_secret, sign
from worker import cli
from worker.app import QUEUE
from worker.demo.fake_openai import FakeOpenAI

pytestmark = pytest.mark.e2e


class ReceiverProcess(HttpServer):
    """`ftdeploy webhooks serve` in its own process group, logging to a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        super().__init__(["webhooks", "serve"], env, log_path)

    def start(self, timeout: float = 30.0) -> ReceiverProcess:
        super().start(timeout)
        return self

    def post(self, delivery: Delivery) -> httpx2.Response:
        return httpx2.post(
            f"{self.url}/webhooks/openai",
            content=delivery.body,
            headers=delivery.headers,
            timeout=10,
        )


@contextmanager
def running_receiver(env: Mapping[str, str], log_path: Path) -> Iterator[ReceiverProcess]:
    receiver = ReceiverProcess(env, log_path).start()
    try:
        yield receiver
    finally:
        receiver.stop()


@contextmanager
def black_hole() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a broker that hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def _event_state(job_id: str) -> str | None:
    with unit_of_work() as session:
        event = find_event(session, job_id)
        return None if event is None else event.state


def _split(slug: str) -> list[tuple[int, str, int]]:
    with unit_of_work() as session:
        rows = versions.list_versions(session, slug)
        return sorted((v.version, v.status, v.traffic_percent) for v in rows)


def _audit_events(slug: str) -> int:
    with unit_of_work() as session:
        return len(audit.history(session, slug))


def _metric(receiver: ReceiverProcess, outcome: str) -> float:
    text = httpx2.get(f"{receiver.url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'ftdeploy_webhooks_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_signed_delivery_deploys_by_strategy_and_redeliveries_do_nothing(
    e2e_env: dict[str, str], fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    secret = new_secret()
    assert (
        cli.main(
            [
                "tenant",
                "add",
                "acme",
                "--no-require-evaluation",
                "--strategy",
                "canary",
                "--canary-percent",
                "20",
            ]
        )
        == 0
    )
    fake_openai.add_job("ftjob-wh1", statuses=("running", "succeeded"), tenant="acme")
    fake_openai.add_job("ftjob-wh2", statuses=("succeeded",), tenant="acme")
    env = {**e2e_env, "FTDEPLOY_WEBHOOK_SECRET": secret}
    with running_worker(e2e_env, tmp_path), running_receiver(env, tmp_path / "web.log") as web:
        first = web.post(sign(secret, job_event("ftjob-wh1"), webhook_id="wh_e2e_1"))
        assert first.status_code == 200 and first.json()["status"] == "recorded"
        wait_for(lambda: _event_state("ftjob-wh1") == EventState.DONE, 30, web.log())
        # Nothing else serves: the canary takes all the traffic (design rule).
        assert _split("acme") == [(1, "production", 100)]

        delivery = sign(secret, job_event("ftjob-wh2"), webhook_id="wh_e2e_2")
        assert web.post(delivery).json()["status"] == "recorded"
        wait_for(lambda: _event_state("ftjob-wh2") == EventState.DONE, 30, web.log())
        deployed = [(1, "production", 80), (2, "production", 20)]
        assert _split("acme") == deployed
        polls, trail = fake_openai.requests("ftjob-wh2"), _audit_events("acme")

        for _ in range(5):
            again = web.post(delivery)
            assert again.status_code == 200
            assert again.json()["status"] == "duplicate"
        assert _metric(web, "duplicate") == 5
        assert _metric(web, "recorded") == 2
        # Nothing was handed to the broker: no message waits, none was taken.
        assert redis.Redis.from_url(e2e_env["FTDEPLOY_BROKER_URL"]).llen(QUEUE) == 0
        assert fake_openai.requests("ftjob-wh2") == polls

    assert _split("acme") == deployed
    assert _audit_events("acme") == trail
    with unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 2
    assert secret.removeprefix("whsec_") not in (tmp_path / "web.log").read_text()
    assert delivery.signature.removeprefix("v1,") not in (tmp_path / "web.log").read_text()


def test_receiver_killed_between_commit_and_enqueue_reconciler_delivers(
    e2e_env: dict[str, str], fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    secret = new_secret()
    assert cli.main(["tenant", "add", "acme", "--no-require-evaluation"]) == 0
    fake_openai.add_job("ftjob-crash", statuses=("succeeded",), tenant="acme")
    delivery = sign(secret, job_event("ftjob-crash"), webhook_id="wh_crash")
    broker = redis.Redis.from_url(e2e_env["FTDEPLOY_BROKER_URL"])

    # The receiver's broker hangs: it commits, answers, then blocks in the send. Killed there.
    with black_hole() as hanging_broker:
        env = {**e2e_env, "FTDEPLOY_WEBHOOK_SECRET": secret, "FTDEPLOY_BROKER_URL": hanging_broker}
        web = ReceiverProcess(env, tmp_path / "web.log").start()
        try:
            response = web.post(delivery)
            assert response.status_code == 200 and response.json()["status"] == "recorded"
            with unit_of_work() as session:
                event = find_event(session, "ftjob-crash")
                assert event is not None and event.enqueued_at is None
            assert broker.llen(QUEUE) == 0
            web.kill()
        finally:
            web.stop()
    # Killed while the send hung: it neither completed nor failed.
    assert "webhook.enqueued" not in web.log()
    assert "webhook.enqueue_deferred" not in web.log()

    # A worker with beat: the reconciler finds the stranded event and sends it.
    worker_env = {**e2e_env, "FTDEPLOY_RECONCILE_GRACE_SECONDS": "1"}
    with running_worker(worker_env, tmp_path, beat=True) as worker:
        wait_for(lambda: _event_state("ftjob-crash") == EventState.DONE, 45, worker.log())
        assert "events.reconciled" in worker.log()
        assert _split("acme") == [(1, "production", 100)]

        # OpenAI got its 200 before the kill; a replay of the delivery is still a no-op.
        env = {**e2e_env, "FTDEPLOY_WEBHOOK_SECRET": secret}
        with running_receiver(env, tmp_path / "web2.log") as web2:
            assert web2.post(delivery).json()["status"] == "duplicate"
    assert _split("acme") == [(1, "production", 100)]
    assert fake_openai.requests("ftjob-crash") == 1
