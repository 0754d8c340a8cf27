"""OpenAI job polling: one fine-tuning job, and its result metrics, read with the official SDK.

Every failure of a call leaves this module as one of two registry errors, so a task decides
"retry later" or "record and stop" in one place:

- `UpstreamTransient` (retryable): 429 (carrying the server's Retry-After), 408, 425 and 5xx,
  timeouts, refused or dropped connections, and 200 answers that are not a valid job or result
  file — a proxy glitch passes; the caller bounds the retries.
- `UpstreamPermanent`: every other 4xx (400, 401, 403, 404, 409, 422, …), and a succeeded job
  that names no fine-tuned model.

Reasons carry the HTTP status and OpenAI's error code and message with anything key-like masked
(OpenAI echoes a masked key in 401s); never the API key or a request header. The SDK's own
retries are off: backoff belongs to the caller, which sees and bounds every attempt.
"""

from __future__ import annotations

import csv
import email.utils
import io
import math
import re
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import openai

from registry import validation
from registry.errors import UpstreamPermanent, UpstreamTransient
from registry.masking import mask

JOB_STATUSES = frozenset(
    {"validating_files", "queued", "running", "succeeded", "failed", "cancelled"}
)
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

# 408/425 are "try again" by definition; 409 is the SDK's lock-timeout retry, but for a GET of a
# job it is not something waiting fixes, so it stays permanent as the design says.
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
# A word holding an OpenAI key (sk-…, sk-proj-…) or the masked echo of one ("sk-abc****wxyz").
_KEYLIKE = re.compile(r"\bsk-|\*{3}")
_MAX_REASON = 300


@dataclass(frozen=True)
class JobSnapshot:
    """What ftdeploy needs of one fine-tuning job, as OpenAI reported it at one poll."""

    job_id: str
    status: str
    base_model: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    error: str | None  # "code: message" of a failed job
    finished_at: datetime | None  # UTC-aware
    tenant: str | None  # metadata["tenant"], when the pipeline set it
    result_files: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        """True once the job can no longer change: succeeded, failed or cancelled."""
        return self.status in TERMINAL_STATUSES


def make_client(
    api_key: str | None = None, base_url: str | None = None, timeout: float = 30.0
) -> openai.OpenAI:
    """An SDK client for polling: `timeout` seconds per call and no SDK retries.

    `api_key` and `base_url` default to the SDK's own `OPENAI_API_KEY` / `OPENAI_BASE_URL`.
    Raises `openai.OpenAIError` when no API key is available (the SDK would otherwise accept an
    admin key alone and fail at the first call), ValueError on a non-positive timeout.
    """
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    # max_retries=0: an SDK retry sleeps inside the task, invisible to the caller's backoff,
    # deadline and attempt count.
    client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
    # A key read from a file keeps its newline: sent as is, the HTTP library refuses the header
    # and quotes it, key included, in its error.
    client.api_key = (client.api_key or "").strip()
    if not client.api_key:
        client.close()
        raise openai.OpenAIError("no OpenAI API key: pass api_key or set OPENAI_API_KEY")
    return client


def fetch_job(client: openai.OpenAI, job_id: str) -> JobSnapshot:
    """Reads one fine-tuning job. A plain GET: no side effects, safe to repeat.

    Raises InvalidInput (malformed id, before any call), UpstreamTransient or UpstreamPermanent
    as the module docstring maps them.
    """
    job_id = validation.job_id(job_id)
    with _upstream_errors(client, job_id, "retrieving the job"):
        # The raw body, checked field by field in `_snapshot`: the SDK's model of a job (built
        # without validating, nested objects and all) costs more than the GET itself.
        body = client.fine_tuning.jobs.with_raw_response.retrieve(job_id).http_response.json()
    return _snapshot(job_id, body)


def fetch_result_metrics(client: openai.OpenAI, snapshot: JobSnapshot) -> dict[str, float]:
    """The final row of the job's first result file (OpenAI's step-metrics CSV) as floats.

    Empty and non-numeric cells are skipped and `step` is dropped; {} when the job has no result
    file or the file has no data row. A file that is not a metrics CSV is UpstreamTransient;
    call errors are mapped like `fetch_job`'s. A plain GET, safe to repeat.
    """
    if not snapshot.result_files:
        return {}
    file_id = snapshot.result_files[0]
    if not validation.is_openai_id(file_id):
        raise _malformed(snapshot.job_id, f"result file id {file_id[:60]!r}")
    with _upstream_errors(client, snapshot.job_id, "downloading the result file"):
        text = client.files.content(file_id).text
    return _final_row(snapshot.job_id, text)


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """How long the server asks us to wait: `retry-after-ms`, else `Retry-After` in seconds or
    as an HTTP date. None when absent or unusable; never negative (a past date is 0)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) / scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@contextmanager
def _upstream_errors(client: openai.OpenAI, job_id: str, doing: str) -> Iterator[None]:
    # `from None` throughout: the SDK exceptions carry OpenAI's raw message (with a masked key)
    # and the request; what gets logged is only the reason built here.
    try:
        yield
    except openai.APIResponseValidationError:
        raise _malformed(job_id, f"{doing}: the body does not match the SDK's schema") from None
    except openai.APIStatusError as exc:
        reason = f"{doing}: {_status_reason(exc, client.api_key)}"
        status = exc.status_code
        if status in _TRANSIENT_STATUSES or status >= 500:
            # The header is only reachable on the raw httpx response the exception keeps.
            wait = retry_after_seconds(exc.response.headers)
            raise UpstreamTransient(job_id, reason, retry_after=wait) from None
        raise UpstreamPermanent(job_id, reason) from None
    except openai.APITimeoutError:
        raise UpstreamTransient(job_id, f"{doing}: timed out waiting for OpenAI") from None
    except openai.APIConnectionError as exc:
        cause = exc.__cause__
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else exc.message
        reason = f"{doing}: connection failed ({_clean(detail, client.api_key)})"
        raise UpstreamTransient(job_id, reason) from None
    except ValueError as exc:
        # A 200 with a JSON content type but a body that is not JSON: the SDK lets the
        # JSONDecodeError (or UnicodeDecodeError) escape unwrapped.
        raise _malformed(job_id, f"{doing}: {type(exc).__name__}") from None


def _status_reason(exc: openai.APIStatusError, api_key: str) -> str:
    # The SDK hands over the inner `error` object as `body` (raw text when it was not JSON,
    # e.g. a proxy's HTML page, which is not worth repeating).
    body = exc.body if isinstance(exc.body, dict) else {}
    code, message = body.get("code"), body.get("message")
    reason = f"HTTP {exc.status_code}"
    if isinstance(code, str) and code:
        reason += f" ({code})"
    if isinstance(message, str) and message:
        reason += f": {message}"
    return _clean(reason, api_key)


def _clean(text: str, api_key: str) -> str:
    """One line, bounded, with the API key, every configured secret and anything key-like
    masked (`registry.masking`)."""
    text = text[: 8 * _MAX_REASON]  # bounds the work on a huge upstream message
    text = mask(text, [api_key] if len(api_key) >= 8 else [])  # shorter would mask words
    text = " ".join("***" if _KEYLIKE.search(word) else word for word in text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def _malformed(job_id: str, detail: str) -> UpstreamTransient:
    return UpstreamTransient(job_id, f"malformed response from OpenAI: {detail}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _snapshot(job_id: str, job: object) -> JobSnapshot:
    """Validates the fields ftdeploy uses of a job's JSON body: each one is checked here (the
    SDK would build a model without validating, so a wrong shape would pass it anyway)."""
    if not isinstance(job, dict):  # e.g. a JSON string or list served as 200
        raise _malformed(job_id, f"expected a fine-tuning job, got {type(job).__name__}")
    problems: list[str] = []
    get = job.get
    if get("object") != "fine_tuning.job":
        problems.append(f"object is {_short(get('object'))}")
    if get("id") != job_id:
        problems.append(f"id is {_short(get('id'))}")
    status, model, fine_tuned = get("status"), get("model"), get("fine_tuned_model")
    if not isinstance(status, str) or status not in JOB_STATUSES:
        problems.append(f"unknown status {_short(status)}")
    if not isinstance(model, str) or not model:
        problems.append(f"model is {_short(model)}")
    if fine_tuned is not None and not isinstance(fine_tuned, str):
        problems.append(f"fine_tuned_model is {_short(fine_tuned)}")
    tokens = get("trained_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)):
        problems.append(f"trained_tokens is {_short(tokens)}")
    result_files = get("result_files")
    if not isinstance(result_files, list) or not all(isinstance(f, str) for f in result_files):
        problems.append(f"result_files is {_short(result_files)}")
    metadata = get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        problems.append(f"metadata is {_short(metadata)}")
    finished_at = _timestamp(get("finished_at"), problems)
    error = _error_text(get("error"), problems)
    if problems:
        raise _malformed(job_id, "; ".join(problems))

    tenant = metadata.get("tenant") if isinstance(metadata, dict) else None
    snapshot = JobSnapshot(
        job_id=job_id,
        status=typing.cast(str, status),
        base_model=typing.cast(str, model),
        fine_tuned_model=fine_tuned or None,
        trained_tokens=tokens,
        error=error,
        finished_at=finished_at,
        tenant=tenant if isinstance(tenant, str) and tenant else None,
        result_files=tuple(typing.cast(list[str], result_files)),
    )
    if snapshot.status == "succeeded" and snapshot.fine_tuned_model is None:
        # Not a glitch to wait out: a finished job will not grow a model later.
        raise UpstreamPermanent(job_id, "the job succeeded but names no fine_tuned_model")
    return snapshot


def _timestamp(value: object, problems: list[str]) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, bool) and isinstance(value, int | float) and value >= 0:
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            pass
    problems.append(f"finished_at is {_short(value)}")
    return None


def _error_text(error: object, problems: list[str]) -> str | None:
    if error is None:
        return None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if (
        not isinstance(error, dict)
        or not isinstance(code, str | None)
        or not isinstance(message, str | None)
    ):
        problems.append(f"error is {_short(error)}")
        return None
    parts = [part for part in (code, message) if part]
    # `{}` is OpenAI's "no error" too. Kept on the run and shown to operators: masked.
    return mask(": ".join(parts)) if parts else None


def _final_row(job_id: str, text: str) -> dict[str, float]:
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise _malformed(job_id, f"result file is not CSV ({exc})") from None
    if not rows:
        return {}
    header = [name.strip() for name in rows[0]]
    if "step" not in header:
        raise _malformed(job_id, "result file is not a metrics CSV (no 'step' column)")
    if len(rows) == 1:
        return {}
    metrics: dict[str, float] = {}
    for name, cell in zip(header, rows[-1], strict=False):
        if not name or name == "step":
            continue
        try:
            value = float(cell)
        except ValueError:
            continue
        if math.isfinite(value):  # NaN/inf would poison comparisons and JSON columns
            metrics[name] = value
    return metrics
