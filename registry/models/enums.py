"""The closed sets of values the tables hold; each drives its CHECK constraint and the CLI's
choices."""

from __future__ import annotations

from enum import StrEnum


class Strategy(StrEnum):
    IMMEDIATE = "immediate"
    CANARY = "canary"
    BLUE_GREEN = "blue_green"


class VersionStatus(StrEnum):
    STAGING = "staging"
    PRODUCTION = "production"
    DEPRECATED = "deprecated"
    ARCHIVED = "archived"


class DeploymentStatus(StrEnum):
    AWAITING_EVALUATION = "awaiting_evaluation"
    REJECTED = "rejected"
    STAGED = "staged"  # blue-green, waiting for an operator's switch
    ACTIVE = "active"  # serving, possibly as a canary
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"  # left production because a newer version took it


class Metric(StrEnum):
    """What a canary is judged on."""

    SUCCESS_RATE = "success_rate"
    SCORE = "score"


class Recommendation(StrEnum):
    APPROVE = "approve"
    REVIEW = "review"
    REJECT = "reject"


class OperationKind(StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class KeyRole(StrEnum):
    """An API key's role, in order: each can do what the ones before it can."""

    SERVE = "serve"
    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"


class OperationStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STALE = "stale"  # the tenant's split changed after it was queued (and it was not forced)
    EXPIRED = "expired"  # not started within its time to live
    CANCELLED = "cancelled"  # an operator cancelled it while it was queued


# Every status an operation ends in; nothing changes it afterwards.
FINAL_OPERATION_STATUSES = frozenset(
    {
        OperationStatus.SUCCEEDED,
        OperationStatus.FAILED,
        OperationStatus.STALE,
        OperationStatus.EXPIRED,
        OperationStatus.CANCELLED,
    }
)


class EventState(StrEnum):
    RECEIVED = "received"  # accepted, being worked on (or waiting for a retry)
    DONE = "done"
    FAILED = "failed"
