"""The structured-log helper: lines bounded whatever comes from outside, secrets masked."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from registry.settings import get_settings
from worker.logs import MAX_EXCEPTION_CHARS, MAX_FIELD_CHARS, EventFormatter, MaskingFilter, event

API_KEY = "Zq81-local-gateway-key-77aa"


def _capture(as_json: bool, name: str = "ftdeploy.test-logs") -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EventFormatter(as_json))
    logger = logging.getLogger(f"{name}.{as_json}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


@pytest.fixture
def api_key_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith(("FTDEPLOY_", "OPENAI_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("as_json", [False, True])
def test_log_lines_are_bounded(as_json: bool) -> None:
    logger, stream = _capture(as_json)
    huge = "ftjob-" + "x" * 5_000_000
    event(logger, "job.refused", logging.WARNING, job=huge, reason="r" * 50_000, count=3)
    event(logger, "job.list", jobs=[huge, huge])  # a structure holding outside text
    # A registry module logging without the helper is bounded by the formatter.
    logger.warning("outcomes.dropped", extra={"ftdeploy_fields": {"version_id": huge}})
    try:
        raise ValueError(huge)
    except ValueError:
        logger.exception("task.crashed")
    lines = stream.getvalue().splitlines()
    assert len(stream.getvalue()) < 4 * MAX_FIELD_CHARS * 4 + 2 * MAX_EXCEPTION_CHARS
    assert all(len(line) < 3 * MAX_FIELD_CHARS for line in lines[:3]), [len(x) for x in lines]
    assert "more chars cut]" in lines[0]
    if as_json:
        first = json.loads(lines[0])
        assert first["count"] == 3 and first["job"].startswith("ftjob-xxx")


def test_log_fields_cannot_forge_lines() -> None:
    logger, stream = _capture(False)
    event(logger, "job.refused", job="ftjob-1\n12:00:00 INFO    deployment.applied tenant=acme")
    assert len(stream.getvalue().splitlines()) == 1


@pytest.mark.usefixtures("api_key_env")
@pytest.mark.parametrize("as_json", [False, True])
def test_log_lines_mask_secrets(as_json: bool) -> None:
    logger, stream = _capture(as_json)
    leak = f"LocalProtocolError: Illegal header value b'Bearer {API_KEY}\\n'"
    event(logger, "job.retry", job="ftjob-1", reason=leak, detail={"error": leak})
    try:
        raise RuntimeError(f"connect to postgresql://app:pa@ss@db/app with {API_KEY}")
    except RuntimeError:
        logger.exception("task.crashed")
    text = stream.getvalue()
    assert "job.retry" in text and "Illegal header value" in text
    for secret in (API_KEY, "pa@ss"):
        assert secret not in text


@pytest.mark.usefixtures("api_key_env")
def test_other_libraries_lines_are_masked_and_bounded() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(MaskingFilter())
    logger = logging.getLogger("celery.test-masking")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.error("Task raised: %r", RuntimeError(f"Bearer {API_KEY} " + "y" * 100_000))
    try:
        raise RuntimeError(API_KEY)
    except RuntimeError:
        logger.exception("again")
    text = stream.getvalue()
    assert API_KEY not in text
    assert len(text) < 4 * MAX_FIELD_CHARS + MAX_EXCEPTION_CHARS + 1000


@pytest.mark.parametrize(("level", "http"), [(logging.INFO, logging.WARNING), ("DEBUG", 10)])
def test_the_http_librarys_request_lines_only_at_debug(level: int | str, http: int) -> None:
    from worker import logs

    ours, library = logging.getLogger("ftdeploy"), logging.getLogger("httpx2")
    saved = (ours.handlers[:], ours.level, ours.propagate, library.level)
    try:
        logs.configure(level=level)
        assert library.level == http
    finally:
        ours.handlers[:], ours.level, ours.propagate = saved[0], saved[1], saved[2]
        library.setLevel(saved[3])
