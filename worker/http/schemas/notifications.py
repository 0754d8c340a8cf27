"""The notification bodies: endpoints, their deliveries and attempts, tests and replays."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from worker.http.schemas.common import (
    TENANT_PATTERN,
    Strict,
)

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
