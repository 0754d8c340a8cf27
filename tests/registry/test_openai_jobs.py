"""OpenAI job polling: the real SDK against the project's fake OpenAI server."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest

from registry import validation
from registry.errors import InvalidInput, UpstreamPermanent, UpstreamTransient
from registry.jobs.openai_jobs import (
    JobSnapshot,
    _clean,
    _final_row,
    _snapshot,
    fetch_job,
    fetch_result_metrics,
    make_client,
    retry_after_seconds,
)
from worker.demo.fake_openai import DEFAULT_METRICS, FakeOpenAI

API_KEY = "sk-test-registry-0123456789wxyz"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    """One server and client for the module; each test scripts its own job ids. (Building an
    SDK client costs ~0.1 s, more than most of these tests.)"""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def client(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with make_client(api_key=API_KEY, base_url=fake.base_url, timeout=2.0) as sdk:
        yield sdk


def _unused_base_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def offline() -> Iterator[openai.OpenAI]:
    """A client aimed where nothing listens: any call that reaches the network fails."""
    with make_client(api_key=API_KEY, base_url=_unused_base_url(), timeout=1.0) as sdk:
        yield sdk


# -- make_client -------------------------------------------------------------------------------


def test_make_client_disables_sdk_retries_and_sets_the_timeout() -> None:
    with make_client(api_key=API_KEY, base_url="http://127.0.0.1:9/v1", timeout=4.5) as sdk:
        assert sdk.max_retries == 0
        assert sdk.timeout == 4.5
        assert str(sdk.base_url) == "http://127.0.0.1:9/v1/"


def test_make_client_reads_the_sdks_environment(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    fake.add_job("ftjob-env")

    with make_client() as sdk:
        assert fetch_job(sdk, "ftjob-env").status == "succeeded"


def test_make_client_without_a_key_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)
    with pytest.raises(openai.OpenAIError):
        make_client()
    # An admin key alone satisfies the SDK's constructor but cannot poll jobs.
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-abcdefgh")
    with pytest.raises(openai.OpenAIError, match="OPENAI_API_KEY"):
        make_client()


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("inf"), float("nan")])
def test_make_client_refuses_a_senseless_timeout(timeout: float) -> None:
    with pytest.raises(ValueError):
        make_client(api_key=API_KEY, timeout=timeout)


# -- fetch_job ---------------------------------------------------------------------------------


def test_a_job_needs_several_polls(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.add_job("ftjob-poll", statuses=("queued", "running", "succeeded"), tenant="acme")

    polls = [fetch_job(client, "ftjob-poll") for _ in range(3)]

    assert [(p.status, p.terminal) for p in polls] == [
        ("queued", False),
        ("running", False),
        ("succeeded", True),
    ]
    running, done = polls[1], polls[2]
    assert running.fine_tuned_model is None and running.finished_at is None
    assert running.trained_tokens is None and running.result_files == ()
    assert done.job_id == "ftjob-poll" and done.tenant == "acme"
    assert done.base_model == "gpt-4o-mini-2024-07-18"
    assert done.fine_tuned_model is not None
    assert done.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:acme::")
    assert done.trained_tokens == 48_210 and done.error is None
    assert done.finished_at is not None and done.finished_at.tzinfo is UTC
    assert abs(done.finished_at - datetime.now(UTC)) < timedelta(hours=2)
    assert len(done.result_files) == 1 and done.result_files[0].startswith("file-")
    assert fake.requests("ftjob-poll") == 3


def test_a_failed_job_reports_code_and_message(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.add_job(
        "ftjob-failed",
        statuses=("running", "failed"),
        error={"code": "invalid_n_examples", "message": "Too few examples.", "param": None},
    )
    fetch_job(client, "ftjob-failed")

    failed = fetch_job(client, "ftjob-failed")

    assert failed.terminal and failed.status == "failed"
    assert failed.error == "invalid_n_examples: Too few examples."
    assert failed.fine_tuned_model is None and failed.finished_at is not None
    assert failed.tenant is None


def test_a_cancelled_job_is_terminal(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.add_job("ftjob-cancel", statuses=("cancelled",))
    snapshot = fetch_job(client, "ftjob-cancel")
    assert snapshot.terminal and snapshot.error is None


def test_a_succeeded_job_without_a_model_is_permanent(
    fake: FakeOpenAI, client: openai.OpenAI
) -> None:
    fake.add_job("ftjob-nomodel", fine_tuned_model="")
    with pytest.raises(UpstreamPermanent, match="fine_tuned_model"):
        fetch_job(client, "ftjob-nomodel")


@pytest.mark.parametrize(
    ("header", "expected"),
    [(7, 7.0), (1.5, 1.5), ("Wed, 21 Oct 2099 07:28:00 GMT", None), ("soon", None)],
)
def test_429_is_transient_with_the_servers_retry_after(
    fake: FakeOpenAI, client: openai.OpenAI, header: float | str, expected: float | None
) -> None:
    fake.add_job("ftjob-429")
    fake.inject("ftjob-429", ("429", header))

    with pytest.raises(UpstreamTransient) as limited:
        fetch_job(client, "ftjob-429")

    error = limited.value
    assert error.retryable and "429" in error.reason and "rate_limit_exceeded" in error.reason
    if header == "Wed, 21 Oct 2099 07:28:00 GMT":
        assert error.retry_after is not None and error.retry_after > 365 * 24 * 3600
    else:
        assert error.retry_after == expected
    assert fake.requests("ftjob-429") == 1  # the SDK did not retry on its own


@pytest.mark.parametrize("code", ["408", "500", "502", "503"])
def test_server_errors_are_transient(fake: FakeOpenAI, client: openai.OpenAI, code: str) -> None:
    fake.add_job("ftjob-5xx")
    fake.inject("ftjob-5xx", (code,))

    with pytest.raises(UpstreamTransient, match=f"HTTP {code}"):
        fetch_job(client, "ftjob-5xx")

    assert fake.requests("ftjob-5xx") == 1
    assert fetch_job(client, "ftjob-5xx").status == "succeeded"  # and it passes


def test_a_slow_reply_beyond_the_timeout_is_transient(fake: FakeOpenAI) -> None:
    fake.add_job("ftjob-slow")
    fake.inject("ftjob-slow", ("slow", 5))

    with make_client(api_key=API_KEY, base_url=fake.base_url, timeout=0.2) as impatient:
        started = time.monotonic()
        with pytest.raises(UpstreamTransient, match="timed out"):
            fetch_job(impatient, "ftjob-slow")
        assert time.monotonic() - started < 3  # gave up well before the answer came


@pytest.mark.parametrize("kind", ["json", "text", "shape", "id", "status"])
def test_a_malformed_body_is_transient(fake: FakeOpenAI, client: openai.OpenAI, kind: str) -> None:
    fake.add_job("ftjob-garbled")
    fake.inject("ftjob-garbled", ("malformed", kind))

    with pytest.raises(UpstreamTransient, match="malformed response"):
        fetch_job(client, "ftjob-garbled")

    assert fetch_job(client, "ftjob-garbled").status == "succeeded"


def test_a_dropped_connection_is_transient(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.add_job("ftjob-drop")
    fake.inject("ftjob-drop", ("drop",))
    with pytest.raises(UpstreamTransient, match="connection failed"):
        fetch_job(client, "ftjob-drop")


def test_nobody_listening_is_transient(offline: openai.OpenAI) -> None:
    with pytest.raises(UpstreamTransient, match="connection failed"):
        fetch_job(offline, "ftjob-anything")


def test_an_unknown_job_is_permanent(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    with pytest.raises(UpstreamPermanent) as missing:
        fetch_job(client, "ftjob-nope")
    assert not missing.value.retryable
    assert "HTTP 404" in missing.value.reason
    assert "Could not find fine-tune job: ftjob-nope" in missing.value.reason


@pytest.mark.parametrize("code", ["400", "401", "403", "409", "422"])
def test_client_errors_are_permanent(fake: FakeOpenAI, client: openai.OpenAI, code: str) -> None:
    fake.add_job("ftjob-4xx")
    fake.inject("ftjob-4xx", (code,))
    with pytest.raises(UpstreamPermanent, match=f"HTTP {code}"):
        fetch_job(client, "ftjob-4xx")


def test_a_rejected_key_never_appears_in_the_error(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.add_job("ftjob-key")
    fake.inject("ftjob-key", ("401",))

    with pytest.raises(UpstreamPermanent) as refused:
        fetch_job(client, "ftjob-key")

    error = refused.value
    assert "HTTP 401 (invalid_api_key): Incorrect API key provided" in error.reason
    shown = " ".join([str(error), repr(error), error.reason, str(error.__cause__)])
    assert API_KEY not in shown and "wxyz" not in shown  # not even OpenAI's masked echo
    assert error.__suppress_context__  # the SDK exception (raw message, request) is not chained


@pytest.mark.parametrize(
    "job_id", ["", "a" * 201, "ftjob 1", "ftjob/../x", "..", ".", "ftjob-1?x=1", "ftjob-\n", 42]
)
def test_a_malformed_job_id_is_refused_before_any_call(
    offline: openai.OpenAI, job_id: object
) -> None:
    # Reaching the network would be UpstreamTransient (see test_nobody_listening_is_transient).
    with pytest.raises(InvalidInput) as refused:
        fetch_job(offline, job_id)  # type: ignore[arg-type]
    assert refused.value.field == "job_id"


def test_valid_job_ids() -> None:
    for job_id in ("ftjob-abc123", "ft:gpt-4o:acme::x", "a.b_c-d", "x" * 200):
        assert validation.job_id(job_id) == job_id


def _job_body(**overrides: object) -> dict[str, Any]:
    body: dict[str, Any] = {
        "object": "fine_tuning.job",
        "id": "ftjob-shape",
        "model": "gpt-4o-mini-2024-07-18",
        "status": "running",
        "created_at": 1_700_000_000,
        "result_files": [],
        "organization_id": "org-x",
        "training_file": "file-x",
        "seed": 1,
        "hyperparameters": {},
    }
    return {**body, **overrides}


@pytest.mark.parametrize(
    "overrides",
    [
        {"error": "boom"},
        {"error": ["boom"]},
        {"error": {"code": 5, "message": "x"}},
        {"status": ["running"]},
        {"status": None},
        {"model": None},
        {"id": None},
        {"object": "fine_tuning.jobs"},
        {"result_files": "file-abc"},
        {"result_files": [1]},
        {"trained_tokens": "many"},
        {"trained_tokens": "12"},
        {"finished_at": -1},
        {"finished_at": 10**20},
        {"finished_at": "yesterday"},
        {"metadata": "tenant=acme"},
        {"fine_tuned_model": 3},
    ],
)
def test_wrongly_shaped_jobs_are_malformed(overrides: dict[str, object]) -> None:
    # A 200 body as JSON decoded it: every field ftdeploy uses is checked.
    with pytest.raises(UpstreamTransient, match="malformed response"):
        _snapshot("ftjob-shape", _job_body(**overrides))


@pytest.mark.parametrize("body", [["a", "list"], "<html>", None, 7])
def test_a_body_that_is_no_object_is_malformed(body: object) -> None:
    with pytest.raises(UpstreamTransient, match="expected a fine-tuning job"):
        _snapshot("ftjob-shape", body)


def test_lenient_where_openai_is_loose() -> None:
    snapshot = _snapshot(
        "ftjob-shape",
        _job_body(error={}, metadata={"tenant": 7, "team": "x"}, fine_tuned_model=""),
    )
    assert (snapshot.error, snapshot.tenant, snapshot.fine_tuned_model) == (None, None, None)
    only_message = _job_body(error={"message": "It broke."})
    assert _snapshot("ftjob-shape", only_message).error == "It broke."


# -- fetch_result_metrics ------------------------------------------------------------------------


def test_result_metrics_are_the_final_csv_row(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.add_job("ftjob-default")
    fake.add_job("ftjob-custom", metrics={"train_loss": 0.05, "full_valid_loss": 0.125})

    default = fetch_result_metrics(client, fetch_job(client, "ftjob-default"))
    custom = fetch_result_metrics(client, fetch_job(client, "ftjob-custom"))

    assert default == DEFAULT_METRICS
    assert custom == {"train_loss": 0.05, "full_valid_loss": 0.125}
    assert fake.file_requests("ftjob-default") == 1


def test_no_result_file_means_no_metrics(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.add_job("ftjob-running", statuses=("running",))
    snapshot = fetch_job(client, "ftjob-running")

    assert fetch_result_metrics(client, snapshot) == {}
    assert fake.file_requests("ftjob-running") == 0


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (("500",), UpstreamTransient),
        (("429", 2), UpstreamTransient),
        (("drop",), UpstreamTransient),
        (("malformed",), UpstreamTransient),
        (("malformed", "text"), UpstreamTransient),
        (("403",), UpstreamPermanent),
    ],
)
def test_result_file_errors_are_mapped(
    fake: FakeOpenAI,
    client: openai.OpenAI,
    fault: tuple[str] | tuple[str, float],
    error: type[Exception],
) -> None:
    fake.add_job("ftjob-file")
    snapshot = fetch_job(client, "ftjob-file")
    fake.inject("ftjob-file", fault)

    with pytest.raises(error) as raised:
        fetch_result_metrics(client, snapshot)

    assert raised.value.job_id == "ftjob-file"  # type: ignore[attr-defined]
    assert fetch_result_metrics(client, snapshot) == DEFAULT_METRICS


def test_a_vanished_result_file_is_permanent(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.add_job("ftjob-vanished")
    snapshot = fetch_job(client, "ftjob-vanished")
    gone = JobSnapshot(**{**snapshot.__dict__, "result_files": ("file-gone",)})

    with pytest.raises(UpstreamPermanent, match="HTTP 404"):
        fetch_result_metrics(client, gone)


def test_final_row_parsing() -> None:
    text = "step,train_loss,valid_loss,note,\n1,0.9,,x,\n\n2,0.5,nan,oops,7\n\n"
    assert _final_row("j", text) == {"train_loss": 0.5}
    assert _final_row("j", "step,train_loss\n3,0.25,extra\n") == {"train_loss": 0.25}
    assert _final_row("j", "step,train_loss\n") == {}
    assert _final_row("j", "") == {}
    with pytest.raises(UpstreamTransient, match="no 'step' column"):
        _final_row("j", '{"object": "fine_tuning.job"}')


# -- helpers -------------------------------------------------------------------------------------


def test_retry_after_parsing() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds({"retry-after": "12"}) == 12.0
    assert retry_after_seconds({"retry-after": "2", "retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "Tue, 01 Jan 2030 12:00:30 GMT"}, now) == 30.0
    assert retry_after_seconds({"retry-after": "Tue, 01 Jan 2030 11:00:00 GMT"}, now) == 0.0
    assert retry_after_seconds({"retry-after": "-5"}) is None
    assert retry_after_seconds({"retry-after": "inf"}) is None
    assert retry_after_seconds({"retry-after-ms": "junk", "retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "whenever"}) is None
    assert retry_after_seconds({}) is None


def test_reasons_mask_keys_and_stay_short() -> None:
    key = "sk-proj-SECRETSECRET1234"
    assert "SECRET" not in _clean(f"bad key {key}, again sk-other-key99", api_key="")
    assert "abcdefgh99" not in _clean("oops abcdefgh99 leaked", api_key="abcdefgh99")
    assert "1234" not in _clean("Incorrect API key provided: sk-pr********1234.", api_key="")
    assert len(_clean("x" * 5000, api_key="")) == 300
    assert _clean("line one\nline two", api_key="") == "line one line two"
