"""What can be notified, and how: event types, endpoint formats, delivery states.

`EventType` is the one list of notifiable events. Adding one is adding a member here (and an
emitter); endpoints subscribe by these values, and `notify add --events` checks against them.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from registry.errors import InvalidInput


class EventType(StrEnum):
    DEPLOYMENT_APPLIED = "deployment.applied"
    DEPLOYMENT_STAGED = "deployment.staged"
    DEPLOYMENT_REJECTED = "deployment.rejected"
    DEPLOYMENT_AWAITING_EVALUATION = "deployment.awaiting_evaluation"
    CANARY_STEPPED = "canary.stepped"
    CANARY_PROMOTED = "canary.promoted"
    CANARY_ROLLED_BACK = "canary.rolled_back"
    CANARY_HOLDING = "canary.holding"  # holding past a share of its progress deadline
    # One per final operation status: `operation.<status>` (stale, expired, cancelled).
    OPERATION_SUCCEEDED = "operation.succeeded"
    OPERATION_FAILED = "operation.failed"
    OPERATION_STALE = "operation.stale"
    OPERATION_EXPIRED = "operation.expired"
    OPERATION_CANCELLED = "operation.cancelled"
    JOB_FAILED = "job.failed"  # a job-finished event failed for good
    TENANT_PAUSED = "tenant.paused"
    TENANT_RESUMED = "tenant.resumed"
    ENDPOINT_DISABLED = "endpoint.disabled"  # another endpoint was disabled (told to the others)


# Only sent by `ftdeploy notify test`; not subscribable, never stored in the outbox.
TEST_EVENT = "notification.test"


class EndpointFormat(StrEnum):
    WEBHOOK = "webhook"  # Standard Webhooks: signed JSON
    SLACK = "slack"  # Slack incoming webhook: readable text


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # not delivered yet (waiting its turn, or for its next attempt)
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # given up: refused for good (4xx) or the retry schedule ran out


def parse_event_types(values: Iterable[str] | None) -> list[str]:
    """Event types from outside (`--events a,b c`): each a known type, no duplicates, sorted.
    None or empty means every type. Raises InvalidInput naming the first unknown one."""
    wanted: set[str] = set()
    for value in values or ():
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if part not in set(EventType):
                known = ", ".join(t.value for t in EventType)
                raise InvalidInput("event type", f"{part!r} is not one of {known}")
            wanted.add(part)
    return sorted(wanted)
