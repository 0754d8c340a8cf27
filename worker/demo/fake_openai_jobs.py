"""The fake OpenAI's scripted jobs and faults, and the bodies it answers with, shaped like
OpenAI's (`worker.demo.fake_openai` serves them)."""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
JOB_STATUSES = frozenset(
    {"validating_files", "queued", "running", "succeeded", "failed", "cancelled"}
)
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
DEFAULT_METRICS: Mapping[str, float] = {
    "train_loss": 0.2311,
    "train_accuracy": 0.9375,
    "valid_loss": 0.312,
    "valid_mean_token_accuracy": 0.9012,
}
DEFAULT_ERROR: Mapping[str, str | None] = {
    "code": "invalid_training_file",
    "message": "The job failed due to an invalid training file: line 12 is not valid JSON.",
    "param": "training_file",
}
# ("malformed", kind): what a broken proxy or an incompatible upstream might send with a 200.
MALFORMED_KINDS = ("json", "text", "shape", "id", "status")

# A fault as tests write it: ("429", retry_after), ("500",), ("slow", seconds), ("malformed",),
# ("malformed", kind), ("drop",), or any other 4xx/5xx code as a string.
Fault = tuple[str] | tuple[str, float] | tuple[str, str]

ID_RE = re.compile(r"[A-Za-z0-9_:.-]{1,200}")
MAX_ADMIN_BODY = 1024 * 1024
ERROR_TEXT = {
    400: ("invalid_request_error", "invalid_request", "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided: {key}."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "fine_tune_not_found", "Not found."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Try again later."),
}
SERVER_ERROR = ("server_error", None, "The server had an error while processing your request.")


@dataclass(frozen=True)
class ScriptedFault:
    kind: str
    arg: float | str | None = None


@dataclass
class ScriptedJob:
    job_id: str
    statuses: tuple[str, ...]
    model: str
    fine_tuned_model: str | None
    tenant: str | None
    trained_tokens: int
    error: dict[str, str | None]
    metrics: dict[str, float]
    created_at: int
    file_id: str
    suffix: str
    step: int = 0
    requests: int = 0
    file_requests: int = 0
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each job GET
    faults: deque[ScriptedFault] = field(default_factory=deque)


def check_fault(raw: Sequence[object]) -> ScriptedFault:
    """Normalizes one fault tuple; raises ValueError on anything the server could not act on."""
    if not raw or not isinstance(raw[0], str) or len(raw) > 2:
        raise ValueError(f"a fault is (kind,) or (kind, argument), got {tuple(raw)!r}")
    kind, arg = raw[0], (raw[1] if len(raw) == 2 else None)
    seconds = _seconds(arg)
    if kind == "drop" and arg is None:
        return ScriptedFault(kind)
    if kind == "slow" and seconds is not None:
        return ScriptedFault(kind, seconds)
    if kind == "malformed" and (arg is None or arg in MALFORMED_KINDS):
        return ScriptedFault(kind, "json" if arg is None else str(arg))
    if kind == "429" and (arg is None or seconds is not None or isinstance(arg, str)):
        # A string is sent verbatim: an HTTP date, or junk the client must survive.
        return ScriptedFault(kind, arg if isinstance(arg, str) else seconds)
    if kind.isdigit() and 400 <= int(kind) <= 599 and arg is None:
        return ScriptedFault(kind)
    raise ValueError(f"unknown or ill-formed fault {tuple(raw)!r}")


def _seconds(value: object) -> float | None:
    """`value` as a finite, non-negative number of seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def column_ok(name: object) -> bool:
    return isinstance(name, str) and bool(name) and not set(name) & set(',"\r\n')


def result_csv(metrics: Mapping[str, float], steps: int = 10) -> str:
    """OpenAI-like step metrics: losses fall, accuracies rise; validation columns only on even
    steps (OpenAI leaves them empty between evaluations); the last row is exactly `metrics`."""
    names = list(metrics)
    lines = [",".join(["step", *names])]
    for step in range(1, steps + 1):
        left = (steps - step) / steps
        cells = [str(step)]
        for name in names:
            final = float(metrics[name])
            if step == steps:
                cells.append(repr(final))
            elif name.startswith("valid") and step % 2:
                cells.append("")
            else:
                earlier = final * (1 + 2 * left) if "loss" in name else final * (1 - 0.4 * left)
                cells.append(f"{earlier:.5f}")
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def job_body(job: ScriptedJob, status: str) -> dict[str, Any]:
    succeeded = status == "succeeded"
    hyperparameters = {"batch_size": 4, "learning_rate_multiplier": 1.8, "n_epochs": 3}
    return {
        "object": "fine_tuning.job",
        "id": job.job_id,
        "model": job.model,
        "created_at": job.created_at,
        "finished_at": job.created_at + 3000 if status in TERMINAL_STATUSES else None,
        "fine_tuned_model": job.fine_tuned_model if succeeded else None,
        "organization_id": "org-fake0000000000000000",
        "result_files": [job.file_id] if succeeded else [],
        "status": status,
        "validation_file": f"file-valid{job.suffix}",
        "training_file": f"file-train{job.suffix}",
        "hyperparameters": hyperparameters,
        "trained_tokens": job.trained_tokens if succeeded else None,
        "error": dict(job.error) if status == "failed" else None,
        "user_provided_suffix": None,
        "seed": int(job.suffix, 16) % 2**31,
        "estimated_finish": None,
        "integrations": [],
        "metadata": {"tenant": job.tenant} if job.tenant is not None else None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    }


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind, code, text = ERROR_TEXT.get(status, SERVER_ERROR if status >= 500 else ERROR_TEXT[400])
    return {"error": {"message": message or text, "type": kind, "param": None, "code": code}}


def masked(token: str) -> str:
    # OpenAI echoes a masked key in 401s; mimic it so clients are tested against that shape.
    return token[:3] + "*" * 12 + token[-4:] if len(token) > 12 else "*" * 8
