"""Signed OpenAI-style deliveries for tests, made with an implementation independent of the code
under test: the `standardwebhooks` package (and, where it cannot go, HMAC written here)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from standardwebhooks import Webhook


def new_secret() -> str:
    """A secret shaped like the one OpenAI shows: whsec_ + base64 of random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def job_event(job_id: str, kind: str = "succeeded", event_id: str = "evt_test") -> dict[str, Any]:
    """The body OpenAI sends for fine_tuning.job.<kind>: the job id only, in data.id."""
    return {
        "id": event_id,
        "object": "event",
        "created_at": 1_750_000_000,
        "type": f"fine_tuning.job.{kind}",
        "data": {"id": job_id},
    }


@dataclass(frozen=True)
class Delivery:
    body: bytes
    headers: dict[str, str]

    @property
    def signature(self) -> str:
        return self.headers["webhook-signature"]


def sign(
    secret: str,
    body: str | dict[str, Any] | list[Any],
    webhook_id: str = "wh_test_1",
    age: timedelta = timedelta(0),
) -> Delivery:
    """A delivery signed with `secret` by standardwebhooks, stamped `age` ago (negative: future)."""
    text = body if isinstance(body, str) else json.dumps(body)
    when = datetime.now(UTC) - age
    signature = Webhook(secret).sign(webhook_id, when, text)
    return Delivery(
        body=text.encode(),
        headers={
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
        },
    )


def sign_bytes(secret: str, body: bytes, webhook_id: str = "wh_test_1") -> Delivery:
    """HMAC by hand over raw bytes (standardwebhooks only signs text): for non-UTF-8 bodies."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    timestamp = str(int(datetime.now(UTC).timestamp()))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return Delivery(
        body=body,
        headers={
            "webhook-id": webhook_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        },
    )
