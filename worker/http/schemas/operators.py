"""The operator bodies: tenants and policies, versions, the audit trail, job events, the
canary's status, operations and evaluations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt

from worker.http.schemas.common import (
    INT32,
    SLUG,
    TENANT_PATTERN,
    Strict,
)


class PolicyIn(Strict):
    """Fields to change; absent ones stay as they are (as `ftdeploy tenant policy`)."""

    strategy: Literal["immediate", "canary", "blue_green"] | None = None
    canary_percent: StrictInt | None = Field(default=None, ge=-INT32, le=INT32)
    canary_steps: list[StrictInt] | None = Field(default=None, max_length=20)
    auto_promote: StrictBool | None = None
    threshold: float | None = None
    metric: Literal["success_rate", "score"] | None = None
    min_samples: StrictInt | None = Field(default=None, ge=-INT32, le=INT32)
    bake_seconds: StrictInt | None = Field(default=None, ge=-INT32, le=INT32)
    deadline_seconds: StrictInt | None = Field(default=None, ge=-INT32, le=INT32)
    auto_rollback: StrictBool | None = None
    require_evaluation: StrictBool | None = None
    keep_deprecated: StrictInt | None = Field(default=None, ge=-INT32, le=INT32)


class TenantIn(PolicyIn):
    slug: str = Field(pattern=rf"^{SLUG}$")


class Tenant(BaseModel):
    slug: str
    id: str
    created_at: str


class Policy(BaseModel):
    tenant: str
    tenant_id: str
    strategy: str
    canary_percent: int
    canary_steps: list[int] | None
    auto_promote: bool
    threshold: float | None
    metric: str
    min_samples: int
    bake_seconds: int
    deadline_seconds: int
    auto_rollback: bool
    require_evaluation: bool
    keep_deprecated: int
    paused: bool = False
    paused_reason: str | None = None


class Version(BaseModel):
    version: int
    name: str
    model_id: str
    status: str
    traffic_percent: int
    run_id: str
    metrics: dict[str, Any]
    created_at: str | None
    deployed_at: str | None
    rolled_back: bool = Field(default=False, description="rolled back: never restored again")
    rolled_back_at: str | None = None


class TrafficChange(BaseModel):
    at: str | None
    action: str
    version: int | None
    actor: str
    reason: str
    before: dict[str, int]
    after: dict[str, int]


class Activity(BaseModel):
    at: str | None
    kind: str
    subject: str
    status: str
    detail: str | None


class JobEvent(BaseModel):
    job_id: str
    tenant: str | None
    source: str
    state: str
    outcome: str | None
    attempts: int
    received_at: str | None
    updated_at: str | None


class CanaryStatus(BaseModel):
    tenant: str
    version: int
    traffic_percent: int
    steps: list[int] | None
    step_started_at: str
    in_step_seconds: float
    bake_seconds: float | None
    deadline_seconds: float | None
    metric: str | None
    samples: int
    min_samples: int | None
    value: float | None
    threshold: float | None
    stable_requests: int
    next: str
    next_percent: int | None
    reason: str
    paused: bool = False


ENQUEUED = (
    "its message reached the broker; false: recorded, and beat's reconciler sends it when the "
    "broker is back"
)
FORCE = "apply it even if the tenant's split changed after it was queued (else it ends stale)"


class PromoteIn(Strict):
    version: StrictInt | str = Field(description="version number: 3 or v3")
    traffic_percent: StrictInt = Field(default=100, ge=1, le=100)
    reason: str | None = Field(default=None, max_length=500)
    force: StrictBool = Field(default=False, description=FORCE)


class RollbackIn(Strict):
    reason: str | None = Field(default=None, max_length=500)
    force: StrictBool = Field(default=False, description=FORCE)


class CancelIn(Strict):
    reason: str | None = Field(default=None, max_length=500)


class Operation(BaseModel):
    operation_id: str
    tenant: str
    kind: str
    version: int | None
    traffic_percent: int | None
    reason: str | None
    actor: str
    status: str
    result: dict[str, Any] | None
    error: str | None
    created_at: str | None
    finished_at: str | None
    enqueued: bool = Field(description=ENQUEUED)


class JobFinishedIn(Strict):
    tenant: str | None = Field(default=None, pattern=TENANT_PATTERN, description="slug or id")


class JobQueued(BaseModel):
    job_id: str
    tenant: str | None
    queued: bool = Field(description="the event is recorded and will be worked on")
    enqueued: bool = Field(description=ENQUEUED)


class EvaluationIn(Strict):
    recommendation: Literal["approve", "review", "reject"]
    metrics: dict[str, float] = Field(default_factory=dict, max_length=100)
    resume: StrictBool = Field(
        default=True, description="ask the worker to resume a deployment waiting for it"
    )


class EvaluationOut(BaseModel):
    evaluation_id: str
    job_id: str
    recommendation: str
    metrics: dict[str, float]
    resume_enqueued: bool | None = Field(
        description="the resume's message reached the broker (null: no resume was asked; false: "
        "recorded, beat's reconciler sends it when the broker is back)"
    )
