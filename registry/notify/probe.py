"""A test notification, sent now: `ftdeploy notify test NAME` and its HTTP twin.

Two steps, so no transaction is open while the request is in flight: `prepare` reads the
endpoint (in the caller's unit of work), `send` posts a `notification.test` message, signed as
any other, and classifies the answer. It is numbered in no stream and recorded nowhere; a
disabled endpoint can be tested too (to see whether it works again before enabling it).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from registry import clock
from registry.notify import delivery, render, sender
from registry.notify.owners import Owner, Visible, find_endpoint


def prepare(
    session: Session, name: str, *, owner: Owner = None, visible: Visible = None
) -> delivery.Outgoing:
    """The test message for the endpoint, with its URL and secret decrypted (for `send` only:
    never shown). Raises SecretUnreadable and what `find_endpoint` raises."""
    endpoint = find_endpoint(session, name, owner=owner, visible=visible)
    return delivery.test_outgoing(session, endpoint, clock.now())


def send(outgoing: delivery.Outgoing, *, timeout: float, public_url: str | None) -> dict[str, Any]:
    """Post the test message and say how it went, as plain data: the status code or the error
    (which never holds the URL), the outcome as a delivery would have it, and how long it took.
    The receiver's body is not read into the answer."""
    request = render.request_for(
        outgoing.format, outgoing.message, outgoing.secret, clock.now(), public_url
    )
    with sender.make_client() as client:
        sent = sender.post(client, outgoing.url, request.body, request.headers, timeout)
    return {
        "name": outgoing.endpoint,
        "webhook_id": outgoing.message.id,
        "status_code": sent.status_code,
        "error": sent.error,
        "outcome": delivery.classify(sent).value,
        "duration_ms": round(sent.duration_ms, 1),
    }
