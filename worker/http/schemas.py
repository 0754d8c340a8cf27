"""Request and response bodies of the HTTP API (pydantic models: they are the OpenAPI schema).

Requests are parsed strictly for shape (unknown fields refused, types exact); values are then
checked by the same registry functions the CLI calls, so the rules live in one place. Integers
that reach the database are bounded to its 32-bit columns here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from registry.canary.outcome_input import MAX_BATCH, MAX_COUNT

INT32 = 2**31 - 1
SLUG = r"[a-z0-9][a-z0-9-]{0,62}"
UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
TENANT_PATTERN = rf"^({SLUG}|{UUID})$"

TenantRef = Annotated[
    str, Path(pattern=TENANT_PATTERN, description="the tenant's slug or id", examples=["acme"])
]
JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_:.\-]{1,200}$", examples=["ftjob-abc123"])]
OperationId = Annotated[str, Path(pattern=rf"^{UUID}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- serving -------------------------------------------------------------------------------------


class Resolution(BaseModel):
    tenant: str = Field(description="the tenant's slug")
    model: str | None = Field(description="the model id to call; null when nothing is live")
    version: int | None
    reason: Literal["single_version", "sticky_split", "weighted_random", "no_model"]


class RoutingVersion(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: int
    version_id: str
    model_id: str
    traffic_percent: int
    a: str = Field(description="per-version hash multiplier, a decimal string")
    b: str = Field(description="per-version hash offset, a decimal string")


class RoutingDocument(BaseModel):
    """A tenant's split, for clients that pick locally (format: `registry.routing_document`)."""

    model_config = ConfigDict(extra="allow")

    tenant: dict[str, str]
    prime: str
    versions: list[RoutingVersion]
    etag: str


class OutcomeRecord(Strict):
    model: str | None = Field(default=None, max_length=400, description="the model id that served")
    version: StrictInt | str | None = Field(default=None, description="or its version: 3 or v3")
    success: StrictBool
    score: float | None = Field(default=None, description="quality in 0..1")
    latency_ms: float | None = None
    count: StrictInt = Field(default=1, ge=1, le=MAX_COUNT, description="alike requests")
    at: str | None = Field(default=None, description="ISO 8601 time with zone; default: now")

    @model_validator(mode="after")
    def _one_reference(self) -> OutcomeRecord:
        if (self.model is None) == (self.version is None):
            raise ValueError("give exactly one of model or version")
        return self

    def as_record(self, tenant: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "tenant": tenant,
            "model": self.model if self.model is not None else self.version,
            "success": self.success,
            "count": self.count,
        }
        for name in ("score", "latency_ms", "at"):
            value = getattr(self, name)
            if value is not None:
                record[name] = value
        return record


class OutcomeBatchIn(Strict):
    batch_id: str = Field(
        min_length=1, max_length=200, description="the same id on a retry: counted once"
    )
    records: list[OutcomeRecord] = Field(max_length=MAX_BATCH)


class TenantOutcomeBatchIn(OutcomeBatchIn):
    tenant: str = Field(pattern=TENANT_PATTERN, description="tenant slug or id")


class RefusedRecord(BaseModel):
    index: int
    field: str
    reason: str


class OutcomeBatchOut(BaseModel):
    batch_id: str
    duplicate: bool = Field(description="seen before: acknowledged, not counted again")
    recorded: int
    refused_count: int
    refused: list[RefusedRecord]


class OfrepRequest(BaseModel):
    context: dict[str, Any] | None = None


class OfrepSuccess(BaseModel):
    key: str
    value: str
    variant: str
    reason: str
    metadata: dict[str, bool | str | int | float]
    cacheable: bool = False


class OfrepFailure(BaseModel):
    key: str
    errorCode: Literal["PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "GENERAL"]
    errorDetails: str


class OfrepNotFound(BaseModel):
    key: str
    errorCode: Literal["FLAG_NOT_FOUND"]
    errorDetails: str


# -- operators -----------------------------------------------------------------------------------


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


class JobFinishedIn(Strict):
    tenant: str | None = Field(default=None, pattern=TENANT_PATTERN, description="slug or id")


class JobQueued(BaseModel):
    job_id: str
    tenant: str | None
    queued: bool


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


# -- notifications -------------------------------------------------------------------------------

EndpointName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")]


class NotificationEndpointIn(Strict):
    """As `ftdeploy notify add`; every value is checked by the registry (a specific problem)."""

    name: str = Field(max_length=100, description="1-63 letters, digits, '-', '_' or '.'")
    url: str = Field(max_length=4000, description="http:// or https:// URL to POST to")
    tenant: str | None = Field(
        default=None, pattern=TENANT_PATTERN, description="only this tenant's events"
    )
    events: list[str] | None = Field(
        default=None, max_length=50, description="event types (e.g. canary.promoted); none: all"
    )
    format: str = Field(default="webhook", max_length=32, description="webhook or slack")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "ops",
                    "url": "https://ops.example.com/hooks/ftdeploy",
                    "tenant": "acme",
                    "events": ["canary.promoted", "canary.rolled_back"],
                }
            ]
        },
    )


class NotificationEndpoint(BaseModel):
    name: str
    tenant: str | None = Field(description="its tenant's slug; null: every tenant's events")
    format: str
    url: str = Field(description="scheme and host only: the path may carry a token")
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    disabled_at: str | None
    failing_since: str | None
    pending: int
    oldest_pending_seconds: float | None
    last_delivered_at: str | None
    created_at: str | None


class NewNotificationEndpoint(NotificationEndpoint):
    secret: str | None = Field(
        description="the whsec_ signing secret: shown this once, never again (null for Slack)"
    )


class DeliveryAttempt(BaseModel):
    at: str | None
    status_code: int | None
    error: str | None
    duration_ms: float


class NotificationDelivery(BaseModel):
    webhook_id: str
    type: str
    stream: str
    seq: int
    status: Literal["pending", "delivered", "failed"]
    attempts: int = Field(description="since it was last queued (history has every one)")
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: str | None
    created_at: str | None
    finished_at: str | None
    history: list[DeliveryAttempt]


class NotificationTest(BaseModel):
    name: str
    webhook_id: str
    status_code: int | None
    error: str | None
    outcome: Literal["delivered", "retry", "failed", "gone"]
    duration_ms: float


class DisableIn(Strict):
    reason: str | None = Field(default=None, max_length=500)


class ReplayIn(Strict):
    since: str | None = Field(
        default=None, max_length=64, description="a duration back (2h, 1d) or an ISO 8601 time"
    )
    event: str | None = Field(default=None, max_length=64, description="one webhook-id")


class Replayed(BaseModel):
    name: str
    requeued: int = Field(description="failed deliveries queued again")
    missed: int = Field(description="events written while it was disabled, now queued")
    webhook_ids: list[str]


class Removed(BaseModel):
    name: str
    removed: bool
