"""The fake OpenAI server, as the real SDK (and a raw HTTP client) sees it."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.server_process import free_port
from worker.demo.fake_openai import DEFAULT_METRICS, FakeOpenAI

API_KEY = "sk-test-fake-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    """One server for the module (each test scripts its own job ids): starting a server and
    building SDK clients per test would cost more than the tests themselves."""
    with FakeOpenAI() as server:
        yield server


@functools.cache
def sdk(base_url: str, *, timeout: float = 5.0, strict: bool = False) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=API_KEY,
        base_url=base_url,
        max_retries=0,
        timeout=timeout,
        _strict_response_validation=strict,
    )


def raw_get(url: str, *, key: str | None = API_KEY) -> tuple[int, dict[str, str], bytes]:
    """GET without the SDK, to see statuses, headers and bodies as they are on the wire."""
    request = urllib.request.Request(url)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def admin(base: str, method: str, path: str, body: object = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_status_advances_one_step_per_poll_and_stays_on_the_last(fake: FakeOpenAI) -> None:
    fake.add_job("ftjob-progress", statuses=("queued", "running", "running", "succeeded"))
    client = sdk(fake.base_url)

    seen = [client.fine_tuning.jobs.retrieve("ftjob-progress").status for _ in range(6)]

    assert seen == ["queued", "running", "running", "succeeded", "succeeded", "succeeded"]
    assert fake.requests("ftjob-progress") == 6


@pytest.mark.parametrize("status", ["running", "succeeded", "failed", "cancelled"])
def test_job_bodies_pass_the_sdks_strict_schema(fake: FakeOpenAI, status: str) -> None:
    fake.add_job("ftjob-shape", statuses=(status,), tenant="acme")

    job = sdk(fake.base_url, strict=True).fine_tuning.jobs.retrieve("ftjob-shape")

    assert (job.object, job.id, job.status) == ("fine_tuning.job", "ftjob-shape", status)
    assert job.metadata == {"tenant": "acme"}
    assert job.model == "gpt-4o-mini-2024-07-18"
    if status == "succeeded":
        assert job.fine_tuned_model is not None
        assert job.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:acme::")
        assert job.trained_tokens == 48_210 and len(job.result_files) == 1
        assert job.error is None and job.finished_at is not None
    elif status == "failed":
        assert job.error is not None and job.error.code == "invalid_training_file"
        assert job.fine_tuned_model is None and job.result_files == []
    else:
        assert job.error is None and job.fine_tuned_model is None
    assert (job.finished_at is None) == (status == "running")


def test_model_name_and_error_can_be_chosen(fake: FakeOpenAI) -> None:
    fake.add_job("ftjob-named", fine_tuned_model="ft:gpt-4o-mini-2024-07-18:acme:v7:abc123")
    fake.add_job(
        "ftjob-broken",
        statuses=("failed",),
        error={"code": "quota_exceeded", "message": "You ran out of quota.", "param": None},
    )
    fake.add_job("ftjob-nomodel", fine_tuned_model="")
    client = sdk(fake.base_url)

    named = client.fine_tuning.jobs.retrieve("ftjob-named")
    broken = client.fine_tuning.jobs.retrieve("ftjob-broken")
    nomodel = client.fine_tuning.jobs.retrieve("ftjob-nomodel")

    assert named.fine_tuned_model == "ft:gpt-4o-mini-2024-07-18:acme:v7:abc123"
    assert broken.error is not None
    assert (broken.error.code, broken.error.message) == ("quota_exceeded", "You ran out of quota.")
    assert nomodel.status == "succeeded" and nomodel.fine_tuned_model is None


def test_result_file_is_an_openai_style_csv_ending_in_the_metrics(fake: FakeOpenAI) -> None:
    file_id = fake.add_job("ftjob-csv")
    client = sdk(fake.base_url)
    job = client.fine_tuning.jobs.retrieve("ftjob-csv")
    assert job.result_files == [file_id]

    lines = client.files.content(file_id).text.strip().splitlines()

    assert lines[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(lines) > 2
    assert lines[1].endswith(",,")  # validation columns are empty between evaluations
    final = dict(zip(lines[0].split(","), lines[-1].split(","), strict=True))
    assert {k: float(v) for k, v in final.items() if k != "step"} == DEFAULT_METRICS
    assert fake.file_requests("ftjob-csv") == 1


def test_unknown_job_and_file_are_404_with_openais_error_shape(fake: FakeOpenAI) -> None:
    for path in ("/fine_tuning/jobs/ftjob-nope", "/files/file-nope/content", "/models"):
        status, _, body = raw_get(fake.base_url + path)
        error = json.loads(body)["error"]
        assert status == 404
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"]

    with pytest.raises(openai.NotFoundError):
        sdk(fake.base_url).fine_tuning.jobs.retrieve("ftjob-nope")


def test_requests_without_a_bearer_token_are_401(fake: FakeOpenAI) -> None:
    fake.add_job("ftjob-auth")
    url = f"{fake.base_url}/fine_tuning/jobs/ftjob-auth"

    assert raw_get(url, key=None)[0] == 401
    assert raw_get(url, key="")[0] == 401
    assert raw_get(url)[0] == 200
    assert fake.requests("ftjob-auth") == 1  # refused requests never reach the job


def test_the_api_key_is_never_logged(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    fake.add_job("ftjob-secret")
    fake.inject("ftjob-secret", ("401",))
    caplog.set_level(logging.DEBUG)
    client = sdk(fake.base_url)

    with pytest.raises(openai.AuthenticationError) as refused:
        client.fine_tuning.jobs.retrieve("ftjob-secret")
    client.fine_tuning.jobs.retrieve("ftjob-secret")

    assert "fine_tuning/jobs/ftjob-secret" in caplog.text  # the fake did log the requests
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err, str(refused.value)):
        assert API_KEY not in text
    assert "sk-************cdef" in str(refused.value)  # masked, as OpenAI echoes it


def test_429_sends_retry_after_and_does_not_advance_the_job(fake: FakeOpenAI) -> None:
    fake.add_job("ftjob-429", statuses=("running", "succeeded"))
    fake.inject("ftjob-429", ("429", 7), ("429", 1.5), ("429", "Wed, 21 Oct 2099 07:28:00 GMT"))
    url = f"{fake.base_url}/fine_tuning/jobs/ftjob-429"

    first, second, third = raw_get(url), raw_get(url), raw_get(url)

    assert first[0] == 429 and first[1]["Retry-After"] == "7"
    assert "retry-after-ms" not in {k.lower() for k in first[1]}
    assert json.loads(first[2])["error"]["code"] == "rate_limit_exceeded"
    assert second[1]["Retry-After"] == "2" and second[1]["retry-after-ms"] == "1500"
    assert third[1]["Retry-After"] == "Wed, 21 Oct 2099 07:28:00 GMT"
    assert json.loads(raw_get(url)[2])["status"] == "running"
    assert fake.requests("ftjob-429") == 4


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 422, 500, 502, 503])
def test_status_code_faults(fake: FakeOpenAI, code: int) -> None:
    fake.add_job("ftjob-code")
    fake.inject("ftjob-code", (str(code),))
    url = f"{fake.base_url}/fine_tuning/jobs/ftjob-code"

    status, _, body = raw_get(url)

    assert status == code
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert raw_get(url)[0] == 200  # one fault, one request


def test_slow_fault_delays_the_answer_and_still_advances(fake: FakeOpenAI) -> None:
    fake.add_job("ftjob-slow", statuses=("running", "succeeded"))
    fake.inject("ftjob-slow", ("slow", 0.4))
    client = sdk(fake.base_url)

    started = time.monotonic()
    first = client.fine_tuning.jobs.retrieve("ftjob-slow")
    elapsed = time.monotonic() - started

    assert elapsed >= 0.4 and first.status == "running"
    assert client.fine_tuning.jobs.retrieve("ftjob-slow").status == "succeeded"


def test_slow_fault_beyond_the_client_timeout_times_out(fake: FakeOpenAI) -> None:
    fake.add_job("ftjob-timeout")
    fake.inject("ftjob-timeout", ("slow", 3))

    with pytest.raises(openai.APITimeoutError):
        sdk(fake.base_url, timeout=0.2).fine_tuning.jobs.retrieve("ftjob-timeout")


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("json", ValueError),  # the SDK lets the JSONDecodeError escape as is
        ("text", str),  # a non-JSON content type comes back as the text itself
        ("shape", "shape"),
        ("id", "ftjob-someoneelse"),
        ("status", "paused"),
    ],
)
def test_malformed_faults(fake: FakeOpenAI, kind: str, expected: object) -> None:
    fake.add_job("ftjob-bad", statuses=("running", "succeeded"))
    fake.inject("ftjob-bad", ("malformed", kind))
    client = sdk(fake.base_url)

    if expected is ValueError:
        with pytest.raises(ValueError):
            client.fine_tuning.jobs.retrieve("ftjob-bad")
    else:
        job: Any = client.fine_tuning.jobs.retrieve("ftjob-bad")
        if expected is str:
            assert isinstance(job, str) and "Bad Gateway" in job
        elif expected == "shape":
            assert job.object == "list" and job.id is None
        elif expected == "paused":
            assert job.status == "paused"
        else:
            assert job.id == expected
    # A malformed answer was not a real step of the job.
    assert client.fine_tuning.jobs.retrieve("ftjob-bad").status == "running"


def test_default_malformed_is_truncated_json(fake: FakeOpenAI) -> None:
    fake.add_job("ftjob-trunc")
    fake.inject("ftjob-trunc", ("malformed",))
    status, headers, body = raw_get(f"{fake.base_url}/fine_tuning/jobs/ftjob-trunc")
    assert status == 200 and headers["Content-Type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


def test_drop_closes_the_connection_without_an_answer(fake: FakeOpenAI) -> None:
    fake.add_job("ftjob-drop")
    fake.inject("ftjob-drop", ("drop",))
    client = sdk(fake.base_url)

    with pytest.raises(openai.APIConnectionError) as dropped:
        client.fine_tuning.jobs.retrieve("ftjob-drop")

    assert not isinstance(dropped.value, openai.APITimeoutError)
    assert client.fine_tuning.jobs.retrieve("ftjob-drop").status == "succeeded"
    assert fake.requests("ftjob-drop") == 2


def test_faults_are_consumed_in_order_by_job_and_file_requests(fake: FakeOpenAI) -> None:
    file_id = fake.add_job("ftjob-queue")
    fake.inject("ftjob-queue", ("500",), ("503",), ("429",))
    base = fake.base_url

    assert raw_get(f"{base}/fine_tuning/jobs/ftjob-queue")[0] == 500
    assert raw_get(f"{base}/files/{file_id}/content")[0] == 503
    assert raw_get(f"{base}/files/{file_id}/content")[0] == 429
    assert raw_get(f"{base}/files/{file_id}/content")[0] == 200
    assert (fake.requests("ftjob-queue"), fake.file_requests("ftjob-queue")) == (1, 3)
    assert fake.pending_faults("ftjob-queue") == 0


def test_bad_scripting_is_refused(fake: FakeOpenAI) -> None:
    with pytest.raises(ValueError):
        fake.add_job("ftjob-x", statuses=("running", "paused"))
    with pytest.raises(ValueError):
        fake.add_job("ftjob-x", statuses=())
    with pytest.raises(ValueError):
        fake.add_job("bad/id")
    with pytest.raises(ValueError):
        fake.add_job("ftjob-x", metrics={"loss": float("nan")})
    fake.add_job("ftjob-x")
    for fault in [("explode",), ("slow",), ("slow", -1), ("malformed", "weird"), ("500", 1)]:
        with pytest.raises(ValueError):
            fake.inject("ftjob-x", fault)
    with pytest.raises(KeyError):
        fake.inject("ftjob-unknown", ("500",))
    assert fake.pending_faults("ftjob-x") == 0


def test_readding_a_job_resets_it(fake: FakeOpenAI) -> None:
    fake.add_job("ftjob-again", statuses=("running", "succeeded"))
    fake.inject("ftjob-again", ("500",))
    raw_get(f"{fake.base_url}/fine_tuning/jobs/ftjob-again")

    fake.add_job("ftjob-again", statuses=("failed",))

    assert (fake.requests("ftjob-again"), fake.pending_faults("ftjob-again")) == (0, 0)
    assert sdk(fake.base_url).fine_tuning.jobs.retrieve("ftjob-again").status == "failed"


def test_stop_is_prompt_with_a_slow_reply_pending_and_restart_keeps_the_port() -> None:
    fake = FakeOpenAI().start()
    fake.add_job("ftjob-hang")
    fake.inject("ftjob-hang", ("slow", 30))
    port = fake.port
    hanging = threading.Thread(
        target=raw_get, args=(f"{fake.base_url}/fine_tuning/jobs/ftjob-hang",), daemon=True
    )
    hanging.start()
    deadline = time.monotonic() + 5
    while fake.requests("ftjob-hang") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)

    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 3  # not the 30 s the slow reply would take
    with pytest.raises(openai.APIConnectionError):
        sdk(f"http://127.0.0.1:{port}/v1", timeout=1).fine_tuning.jobs.retrieve("ftjob-hang")

    fake.start()
    try:
        assert fake.port == port
        assert sdk(fake.base_url).fine_tuning.jobs.retrieve("ftjob-hang").status == "succeeded"
    finally:
        fake.stop()


def test_admin_api_scripts_a_fake_in_another_process() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.demo.fake_openai", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == f"fake OpenAI listening on http://127.0.0.1:{port}/v1"
        base = f"http://127.0.0.1:{port}"

        created = admin(
            base,
            "POST",
            "/_fake/jobs",
            {"job_id": "ftjob-remote", "statuses": ["running", "succeeded"], "tenant": "acme"},
        )
        assert created[0] == 201 and created[1]["result_file"].startswith("file-")
        assert admin(base, "POST", "/_fake/jobs/ftjob-remote/faults", {"faults": [["429", 3]]})[
            1
        ] == {"pending_faults": 1}

        client = sdk(f"{base}/v1")
        with pytest.raises(openai.RateLimitError) as limited:
            client.fine_tuning.jobs.retrieve("ftjob-remote")
        assert limited.value.response.headers["retry-after"] == "3"
        statuses = [client.fine_tuning.jobs.retrieve("ftjob-remote").status for _ in range(2)]
        assert statuses == ["running", "succeeded"]

        assert admin(base, "GET", "/_fake/jobs/ftjob-remote") == (
            200,
            {"job_id": "ftjob-remote", "requests": 3, "file_requests": 0, "pending_faults": 0},
        )
        assert admin(base, "GET", "/_fake/jobs/ftjob-nope")[0] == 404
        assert admin(base, "POST", "/_fake/jobs", {"job_id": "x", "statuses": ["nope"]})[0] == 400
        assert admin(base, "POST", "/_fake/jobs", {"job_id": "x", "colour": "red"})[0] == 400
        bad_fault = {"faults": [["explode"]]}
        assert admin(base, "POST", "/_fake/jobs/ftjob-remote/faults", bad_fault)[0] == 400
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert API_KEY not in err
