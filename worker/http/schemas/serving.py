"""The serving bodies: a resolution, the routing document a client evaluates locally, outcome
batches and their answer, and OpenFeature's OFREP evaluation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from registry.canary.outcome_input import MAX_BATCH, MAX_COUNT
from worker.http.schemas.common import (
    TENANT_PATTERN,
    Strict,
)


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
