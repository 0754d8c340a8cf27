"""The schema, as SQLAlchemy 2 typed models. Migrations in `migrations/` create it; a test checks
that they agree (`alembic check`, plus the CHECK constraints and indexes it does not compare).

Table and column names of the seed are kept (`ai_model_versions`, `ai_deployments`, …).

- `columns`: the declarative base and the column types shared by every table;
- `enums`: the closed sets of values, each driving its CHECK constraint;
- `rollout`: tenants, policies, runs, evaluations, versions, deployments, the audit trail;
- `work`: job events, operations, webhook deliveries;
- `serving`: outcome counters and batches, API keys, routing generations.

Every name is importable from `registry.models` itself; the notification tables live with their
story in `registry.notify.models`.
"""

from registry.models.columns import Base, BigInt, JSONType, UTCDateTime, one_of
from registry.models.enums import (
    FINAL_OPERATION_STATUSES,
    DeploymentStatus,
    EventState,
    KeyRole,
    Metric,
    OperationKind,
    OperationStatus,
    Recommendation,
    Strategy,
    VersionStatus,
)
from registry.models.rollout import (
    AuditEvent,
    Deployment,
    DeploymentPolicy,
    Evaluation,
    FinetuningRun,
    ModelVersion,
    Tenant,
    TrafficEvent,
    in_production,
)
from registry.models.serving import (
    ApiKey,
    ApiKeyTenant,
    OutcomeBatch,
    OutcomeCounter,
    RoutingGeneration,
)
from registry.models.work import JobEvent, Operation, WebhookDelivery

__all__ = [
    "FINAL_OPERATION_STATUSES",
    "ApiKey",
    "ApiKeyTenant",
    "AuditEvent",
    "Base",
    "BigInt",
    "Deployment",
    "DeploymentPolicy",
    "DeploymentStatus",
    "Evaluation",
    "EventState",
    "FinetuningRun",
    "JSONType",
    "JobEvent",
    "KeyRole",
    "Metric",
    "ModelVersion",
    "Operation",
    "OperationKind",
    "OperationStatus",
    "OutcomeBatch",
    "OutcomeCounter",
    "Recommendation",
    "RoutingGeneration",
    "Strategy",
    "Tenant",
    "TrafficEvent",
    "UTCDateTime",
    "VersionStatus",
    "WebhookDelivery",
    "in_production",
    "one_of",
]
