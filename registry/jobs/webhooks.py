"""OpenAI webhook deliveries: what an event means to ftdeploy, and its durable, deduplicated record.

The receiver (`worker.web`) verifies the signature; this module takes over from the verified,
parsed JSON. `parse_event` turns it into a `WebhookEvent` or refuses it (`InvalidInput`);
`record_delivery` writes the delivery and, for a finished fine-tuning job, the job's event row,
in the caller's transaction, so that both are committed together or not at all.

OpenAI retries a delivery until it gets a 2xx and may send one twice; a delivery is identified
by its `webhook-id` header (signed, the same on every retry), kept unique by the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.orm import Session

from registry import clock, dialect, validation
from registry.errors import InvalidInput
from registry.jobs import events
from registry.models import WebhookDelivery

# The events that mean "this fine-tuning job ended"; their payload carries only `data.id`.
JOB_FINISHED_TYPES = frozenset(
    {"fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"}
)
SOURCE = "webhook"
# Standard Webhooks ids are short printable tokens (`msg_…`, `wh_…`); the column holds 200.
_WEBHOOK_ID = re.compile(r"^[\x21-\x7e]{1,200}$")
_EVENT_TYPE = re.compile(r"^[a-z0-9_.]{1,100}$")


class DeliveryOutcome(StrEnum):
    RECORDED = "recorded"  # new, job event written: the caller enqueues the job after commit
    DUPLICATE = "duplicate"  # this webhook-id was recorded before: nothing to do
    IGNORED = "ignored"  # an event type ftdeploy does not act on: nothing written


@dataclass(frozen=True)
class WebhookEvent:
    """A verified event reduced to what ftdeploy uses."""

    webhook_id: str
    event_type: str
    job_id: str | None  # set for the fine_tuning.job.* types, validated

    @property
    def is_job_finished(self) -> bool:
        return self.event_type in JOB_FINISHED_TYPES


def validate_webhook_id(webhook_id: object) -> str:
    if not isinstance(webhook_id, str) or not _WEBHOOK_ID.match(webhook_id):
        raise InvalidInput("webhook-id", "expected 1 to 200 printable ASCII characters")
    return webhook_id


def parse_event(webhook_id: object, payload: object) -> WebhookEvent:
    """Check that `payload` (parsed JSON) is an event and extract its type and job id.

    The SDK's unwrap() does not validate its result (a list, a string or `{}` come back as
    they are), so this is where "JSON that is not an event" is refused. Raises InvalidInput.
    """
    webhook_id = validate_webhook_id(webhook_id)
    if not isinstance(payload, dict):
        raise InvalidInput("event", "the body is not a JSON object")
    event_type = payload.get("type")
    if not isinstance(event_type, str) or not _EVENT_TYPE.match(event_type):
        raise InvalidInput("event", "no valid `type`")
    if event_type not in JOB_FINISHED_TYPES:
        return WebhookEvent(webhook_id, event_type, None)
    data = payload.get("data")
    job_id = data.get("id") if isinstance(data, dict) else None
    return WebhookEvent(webhook_id, event_type, validation.job_id(job_id))


def record_delivery(session: Session, event: WebhookEvent) -> DeliveryOutcome:
    """Record the delivery and, for a finished job, accept the job's event (`source="webhook"`).

    Idempotent and safe under concurrency: the delivery row is inserted with
    INSERT … ON CONFLICT (webhook_id) DO NOTHING, so of two concurrent deliveries with one id
    exactly one is RECORDED and the other waits for it, then is a DUPLICATE. Only flushes: the
    caller commits, and the job is sent after the commit (`events.publish_event`; a crash in
    between leaves the job event with `enqueued_at` NULL, which the reconciler re-sends).
    Event types ftdeploy does not act on write nothing.
    """
    if not event.is_job_finished:
        return DeliveryOutcome.IGNORED
    assert event.job_id is not None  # parse_event sets it for every job-finished type
    inserted = session.execute(
        dialect.insert(session, WebhookDelivery)
        .values(
            webhook_id=event.webhook_id,
            event_type=event.event_type,
            openai_job_id=event.job_id,
            received_at=clock.now(),
        )
        .on_conflict_do_nothing(index_elements=["webhook_id"])
        .returning(WebhookDelivery.id)
    ).scalar_one_or_none()
    if inserted is None:
        return DeliveryOutcome.DUPLICATE
    events.publish_event(session, event.job_id, None, SOURCE)
    return DeliveryOutcome.RECORDED
