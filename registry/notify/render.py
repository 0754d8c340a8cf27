"""What goes on the wire: a Standard Webhooks request (signed JSON), or a Slack message.

Generic webhooks (https://www.standardwebhooks.com): body `{"type", "timestamp", "data"}` as
compact JSON; headers `webhook-id` (the outbox event's id, the same on every attempt),
`webhook-timestamp` (this attempt, Unix seconds) and `webhook-signature` (`v1,` + base64 of
HMAC-SHA256 over `id.timestamp.body` with the endpoint's own secret).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from registry.notify.secrets import signing_key
from registry.notify.types import EndpointFormat


@dataclass(frozen=True)
class Message:
    """One event as the delivery loop hands it over (plain values)."""

    id: str  # webhook-id
    type: str
    created_at: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class Request:
    body: bytes
    headers: dict[str, str]


def body_of(message: Message) -> bytes:
    payload = {
        "type": message.type,
        "timestamp": message.created_at.isoformat(),
        "data": message.data,
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_request(message: Message, secret: str, now: datetime) -> Request:
    body = body_of(message)
    timestamp = int(now.timestamp())
    return Request(
        body,
        {
            "content-type": "application/json",
            "user-agent": "ftdeploy-notifications",
            "webhook-id": message.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, message.id, timestamp, body),
        },
    )


def request_for(
    format: str, message: Message, secret: str | None, now: datetime, public_url: str | None
) -> Request:
    if format == EndpointFormat.SLACK:
        text = slack_text(message, public_url)
        return Request(
            json.dumps({"text": text}).encode(),
            {"content-type": "application/json", "user-agent": "ftdeploy-notifications"},
        )
    assert secret is not None, "a webhook endpoint always has a secret"
    return webhook_request(message, secret, now)


def split_text(split: dict[str, int] | None) -> str:
    if not split:
        return "nothing serving"
    return ", ".join(f"v{v} {p}%" for v, p in sorted(split.items(), key=lambda kv: int(kv[0])))


_TITLES = {
    "deployment.applied": "deployed {version}",
    "deployment.staged": "staged {version} (waiting for an operator's switch)",
    "deployment.rejected": "deployment rejected",
    "deployment.awaiting_evaluation": "deployment waiting for an evaluation",
    "canary.stepped": "canary {version} stepped",
    "canary.promoted": "canary {version} promoted",
    "canary.rolled_back": "canary {version} rolled back",
    "canary.holding": "canary {version} holding near its deadline",
    "operation.succeeded": "operation succeeded",
    "operation.failed": "operation failed",
    "operation.stale": "operation stale",
    "operation.expired": "operation expired",
    "operation.cancelled": "operation cancelled",
    "job.failed": "job event failed",
    "tenant.paused": "tenant paused",
    "tenant.resumed": "tenant resumed",
    "endpoint.disabled": "notification endpoint disabled",
    "notification.test": "test notification",
}


def slack_text(message: Message, public_url: str | None) -> str:
    """Slack mrkdwn: who, what, the split before → after, the reason, a link to the tenant."""
    data = message.data
    tenant = (data.get("tenant") or {}).get("slug")
    version = data.get("version")
    title = _TITLES.get(message.type, message.type).format(
        version=f"v{version}" if version is not None else ""
    )
    lines = [f"*{tenant or 'ftdeploy'}*: {title}".replace("  ", " ")]
    if "split_before" in data or "split_after" in data:
        lines.append(
            f"{split_text(data.get('split_before'))} → {split_text(data.get('split_after'))}"
        )
    if data.get("reason"):
        lines.append(f"Reason: {data['reason']}")
    if data.get("actor"):
        lines.append(f"By: {data['actor']}")
    if public_url and tenant:
        lines.append(f"<{public_url.rstrip('/')}/tenants/{tenant}|Open {tenant} in ftdeploy>")
    return "\n".join(lines)
