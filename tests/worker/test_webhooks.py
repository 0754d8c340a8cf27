"""The webhook receiver through starlette's TestClient, against a real database (PostgreSQL and
SQLite) and a real Redis broker: what it accepts, what it refuses, and what reaches the queue.

Deliveries are signed by `standardwebhooks` (tests/worker/webhook_signing.py), never by the code
under test."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import delete, func, select
from starlette.testclient import TestClient

from registry import db as registry_db
from registry.db import unit_of_work
from registry.errors import InvalidInput
from registry.jobs.events import find_event
from registry.models import JobEvent, WebhookDelivery
from registry.settings import Settings
from tests import services
from tests.conftest import fresh_postgres_url
from tests.harness import reset_settings
from tests.worker.webhook_signing import Delivery, job_event, new_secret, sign, sign_bytes
from worker.app import QUEUE
from worker.web import METRICS, create_app, require_secret

MAX_BODY = 4096
URL = "/webhooks/openai"


class Receiver:
    """A TestClient on the receiver plus what a test checks afterwards."""

    def __init__(self, client: TestClient, secret: str, broker_url: str) -> None:
        self.client = client
        self.secret = secret
        self.broker = redis.Redis.from_url(broker_url)

    def post(self, delivery: Delivery, **headers: str) -> Any:
        return self.client.post(URL, content=delivery.body, headers={**delivery.headers, **headers})

    def queued(self) -> list[tuple[str, list[Any]]]:
        """(task name, args) of every message waiting in the broker's queue."""
        messages = []
        for raw in self.broker.lrange(QUEUE, 0, -1):
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            messages.append((message["headers"]["task"], args))
        return messages

    def rows(self) -> tuple[int, int]:
        with unit_of_work() as session:
            deliveries = session.scalar(select(func.count()).select_from(WebhookDelivery))
            events = session.scalar(select(func.count()).select_from(JobEvent))
        return deliveries or 0, events or 0

    def assert_untouched(self) -> None:
        assert self.rows() == (0, 0)
        assert self.queued() == []


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def module_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One migrated database per dialect for this module (a fresh one per test costs more than
    all of these tests); `receiver` empties its tables before each test."""
    if request.param == "postgresql":
        postgres = request.getfixturevalue("postgres")
        url = fresh_postgres_url(postgres, request.getfixturevalue("postgres_template"))
    else:
        path = tmp_path_factory.mktemp("webhooks-db") / "ftdeploy.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    yield url
    bind = registry_db.session_factory(url).kw.get("bind")
    if bind is not None:
        bind.dispose()
    registry_db._session_factory.cache_clear()
    if request.param == "postgresql":
        services.drop_database(request.getfixturevalue("postgres").url, url.rsplit("/", 1)[1])


@pytest.fixture
def receiver(
    module_db: str, broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Receiver]:
    with registry_db.unit_of_work(module_db) as session:
        session.execute(delete(WebhookDelivery))
        session.execute(delete(JobEvent))
    secret = new_secret()
    for key, value in {
        "FTDEPLOY_DATABASE_URL": module_db,
        "FTDEPLOY_BROKER_URL": broker_url,
        "FTDEPLOY_DATA_DIR": str(tmp_path / "data"),
        "FTDEPLOY_WEBHOOK_SECRET": secret,
        "FTDEPLOY_WEBHOOK_MAX_BODY_BYTES": str(MAX_BODY),
    }.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    with TestClient(create_app()) as client:
        yield Receiver(client, secret, broker_url)
    reset_settings()


def _count(outcome: str) -> float:
    return METRICS.get_sample_value("ftdeploy_webhooks_total", {"outcome": outcome}) or 0.0


def test_valid_delivery_is_recorded_then_enqueued(receiver: Receiver) -> None:
    before = _count("recorded")
    response = receiver.post(sign(receiver.secret, job_event("ftjob-ok1")))
    assert response.status_code == 200
    assert response.json() == {
        "status": "recorded",
        "type": "fine_tuning.job.succeeded",
        "job_id": "ftjob-ok1",
    }
    assert receiver.rows() == (1, 1)
    assert receiver.queued() == [("ftdeploy.job_finished", ["ftjob-ok1"])]
    with unit_of_work() as session:
        event = find_event(session, "ftjob-ok1")
        assert event is not None
        assert event.source == "webhook"
        assert event.enqueued_at is not None  # so the reconciler leaves it alone
    assert _count("recorded") == before + 1


@pytest.mark.parametrize("kind", ["failed", "cancelled"])
def test_failed_and_cancelled_jobs_are_enqueued_too(receiver: Receiver, kind: str) -> None:
    response = receiver.post(sign(receiver.secret, job_event("ftjob-end1", kind)))
    assert response.status_code == 200
    assert receiver.queued() == [("ftdeploy.job_finished", ["ftjob-end1"])]


def test_wrong_secret_is_refused(receiver: Receiver) -> None:
    response = receiver.post(sign(new_secret(), job_event("ftjob-x")))
    assert response.status_code == 400
    assert "signature" in response.json()["error"]
    receiver.assert_untouched()


def test_tampered_body_is_refused(receiver: Receiver) -> None:
    signed = sign(receiver.secret, job_event("ftjob-honest"))
    tampered = Delivery(signed.body.replace(b"ftjob-honest", b"ftjob-forged"), signed.headers)
    assert tampered.body != signed.body
    assert receiver.post(tampered).status_code == 400
    receiver.assert_untouched()


@pytest.mark.parametrize("age", [timedelta(seconds=360), timedelta(seconds=-360)])
def test_stale_and_future_timestamps_are_refused(receiver: Receiver, age: timedelta) -> None:
    response = receiver.post(sign(receiver.secret, job_event("ftjob-t"), age=age))
    assert response.status_code == 400
    assert "too old" in response.json()["error"] or "too new" in response.json()["error"]
    receiver.assert_untouched()


@pytest.mark.parametrize("age", [timedelta(seconds=240), timedelta(seconds=-240)])
def test_timestamps_within_tolerance_are_accepted(receiver: Receiver, age: timedelta) -> None:
    assert receiver.post(sign(receiver.secret, job_event("ftjob-t"), age=age)).status_code == 200


def test_timestamp_is_covered_by_the_signature(receiver: Receiver) -> None:
    signed = sign(receiver.secret, job_event("ftjob-ts"), age=timedelta(seconds=60))
    moved = str(int(signed.headers["webhook-timestamp"]) + 30)
    assert receiver.post(signed, **{"webhook-timestamp": moved}).status_code == 400
    receiver.assert_untouched()


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_refused(receiver: Receiver, header: str) -> None:
    signed = sign(receiver.secret, job_event("ftjob-h"))
    headers = {k: v for k, v in signed.headers.items() if k != header}
    response = receiver.client.post(URL, content=signed.body, headers=headers)
    assert response.status_code == 400
    assert response.json() == {"error": f"missing header: {header}"}
    receiver.assert_untouched()


def test_several_signatures_one_valid_is_accepted(receiver: Receiver) -> None:
    signed = sign(receiver.secret, job_event("ftjob-multi"))
    other = sign(new_secret(), job_event("ftjob-multi")).signature
    header = f"{other} {signed.signature} v1,{base64.b64encode(b'x' * 32).decode()}"
    assert receiver.post(signed, **{"webhook-signature": header}).status_code == 200
    assert receiver.queued() == [("ftdeploy.job_finished", ["ftjob-multi"])]


def test_several_signatures_none_valid_is_refused(receiver: Receiver) -> None:
    signed = sign(receiver.secret, job_event("ftjob-multi"))
    wrong = [sign(new_secret(), job_event("ftjob-multi")).signature for _ in range(3)]
    assert receiver.post(signed, **{"webhook-signature": " ".join(wrong)}).status_code == 400
    receiver.assert_untouched()


def test_replayed_webhook_id_is_a_2xx_no_op(receiver: Receiver) -> None:
    first = sign(receiver.secret, job_event("ftjob-replay"), webhook_id="wh_replay")
    assert receiver.post(first).json()["status"] == "recorded"
    before = _count("duplicate")
    # The same delivery again, and a retry re-signed later with the same webhook-id.
    again = sign(
        receiver.secret,
        job_event("ftjob-replay"),
        webhook_id="wh_replay",
        age=-timedelta(seconds=5),
    )
    for delivery in (first, first, again):
        response = receiver.post(delivery)
        assert response.status_code == 200
        assert response.json()["status"] == "duplicate"
    assert receiver.rows() == (1, 1)
    assert receiver.queued() == [("ftdeploy.job_finished", ["ftjob-replay"])]
    assert _count("duplicate") == before + 3


def test_unknown_event_type_is_ignored_and_counted(receiver: Receiver) -> None:
    before = _count("ignored")
    payload = {"id": "evt_b", "type": "batch.completed", "created_at": 1, "data": {"id": "b_1"}}
    response = receiver.post(sign(receiver.secret, payload))
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    receiver.assert_untouched()
    assert _count("ignored") == before + 1
    assert 'ftdeploy_webhooks_total{outcome="ignored"}' in receiver.client.get("/metrics").text


def test_oversized_body_is_refused_by_content_length(receiver: Receiver) -> None:
    payload = job_event("ftjob-big") | {"padding": "x" * MAX_BODY}
    response = receiver.post(sign(receiver.secret, payload))
    assert response.status_code == 400
    assert "limit" in response.json()["error"]
    receiver.assert_untouched()


def test_oversized_chunked_body_is_refused(receiver: Receiver) -> None:
    """No Content-Length: the bound applies while reading."""
    signed = sign(receiver.secret, job_event("ftjob-big") | {"padding": "x" * MAX_BODY})
    chunks = [signed.body[i : i + 1000] for i in range(0, len(signed.body), 1000)]
    response = receiver.client.post(URL, content=iter(chunks), headers=signed.headers)
    assert response.status_code == 400
    assert "limit" in response.json()["error"]
    receiver.assert_untouched()


def test_body_at_the_limit_is_accepted(receiver: Receiver) -> None:
    payload = job_event("ftjob-edge") | {"padding": ""}
    size = len(json.dumps(payload))
    payload["padding"] = "x" * (MAX_BODY - size)
    signed = sign(receiver.secret, payload)
    assert len(signed.body) == MAX_BODY
    assert receiver.post(signed).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        "[1, 2]",
        '"fine_tuning.job.succeeded"',
        "null",
        "{}",
        '{"type": "fine_tuning.job.succeeded"}',
        '{"type": "fine_tuning.job.succeeded", "data": {"id": 42}}',
        '{"type": "fine_tuning.job.succeeded", "data": {"id": "not a job id"}}',
        "not json at all",
        "[" * 3000,
    ],
)
def test_signed_json_that_is_not_an_event_is_refused(receiver: Receiver, body: str) -> None:
    response = receiver.post(sign(receiver.secret, body))
    assert response.status_code == 400, response.text
    receiver.assert_untouched()


def test_signed_body_that_is_not_utf8_is_refused(receiver: Receiver) -> None:
    response = receiver.post(sign_bytes(receiver.secret, b'{"type": "\xff\xfe"}'))
    assert response.status_code == 400
    receiver.assert_untouched()


def test_non_ascii_signature_is_refused_not_a_crash(receiver: Receiver) -> None:
    """The SDK's hmac.compare_digest raises TypeError on non-ASCII text: still a 400."""
    signed = sign(receiver.secret, job_event("ftjob-na"))
    headers = [(k.encode(), v.encode()) for k, v in signed.headers.items()]
    headers = [(k, b"v1,\xe9\xe9" if k == b"webhook-signature" else v) for k, v in headers]
    response = receiver.client.post(URL, content=signed.body, headers=headers)
    assert response.status_code == 400
    receiver.assert_untouched()


def test_other_methods_and_paths(receiver: Receiver) -> None:
    assert receiver.client.get(URL).status_code == 405
    assert receiver.client.post("/webhooks/other", content=b"{}").status_code == 404


def test_healthz_checks_the_database(receiver: Receiver) -> None:
    response = receiver.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_secret_and_signature_never_logged_or_echoed(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = sign(receiver.secret, job_event("ftjob-log"), webhook_id="wh_log")
    bad = sign(new_secret(), job_event("ftjob-log"), webhook_id="wh_log2")
    stale = sign(receiver.secret, job_event("ftjob-log"), age=timedelta(hours=1))
    replies = [receiver.post(d).text for d in (good, good, bad, stale)]
    secret_key = receiver.secret.removeprefix("whsec_")
    for text in [caplog.text, *replies]:
        assert secret_key not in text
        for delivery in (good, bad, stale):
            assert delivery.signature.removeprefix("v1,") not in text
    assert "webhook.refused" in caplog.text and "webhook.recorded" in caplog.text


def test_database_down_is_503_and_healthz_fails(
    broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = new_secret()
    # Nothing listens on port 1: every connection is refused at once.
    monkeypatch.setenv("FTDEPLOY_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("FTDEPLOY_BROKER_URL", broker_url)
    monkeypatch.setenv("FTDEPLOY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FTDEPLOY_WEBHOOK_SECRET", secret)
    reset_settings()
    try:
        with TestClient(create_app()) as client:
            assert client.get("/healthz").status_code == 503
            signed = sign(secret, job_event("ftjob-down"))
            response = client.post(URL, content=signed.body, headers=signed.headers)
            assert response.status_code == 503  # OpenAI retries it later
            assert redis.Redis.from_url(broker_url).llen(QUEUE) == 0
    finally:
        reset_settings()


@pytest.mark.parametrize(
    "value", [None, "", "  ", "not-a-whsec-secret", "whsec_@@@notbase64", "whsec_"]
)
def test_unusable_secrets_are_refused(value: str | None) -> None:
    with pytest.raises(InvalidInput) as refused:
        require_secret(Settings(webhook_secret=value))
    assert refused.value.field == "FTDEPLOY_WEBHOOK_SECRET"
    key = (value or "").removeprefix("whsec_")
    if key.strip():
        assert key not in str(refused.value)


@pytest.mark.parametrize("value", [None, "whsec_@@@notbase64"])
def test_serve_refuses_to_start_without_a_usable_secret(value: str | None, tmp_path: Path) -> None:
    """The real console script: it must exit at once (a server that started would time out)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTDEPLOY_", "OPENAI_"))}
    env |= {
        "FTDEPLOY_DATA_DIR": str(tmp_path),
        "FTDEPLOY_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    if value is not None:
        env["FTDEPLOY_WEBHOOK_SECRET"] = value
    ftdeploy = Path(sys.executable).with_name("ftdeploy")
    done = subprocess.run(
        [str(ftdeploy), "webhooks", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: invalid FTDEPLOY_WEBHOOK_SECRET: ")
    assert "Traceback" not in done.stderr
    if value:
        assert value not in done.stderr
