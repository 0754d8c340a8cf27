"""What goes on the wire, checked with the `standardwebhooks` library (not the code under
test); Slack's text; secrets stored only encrypted, and nowhere in `notify list`."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from registry.errors import InvalidInput
from registry.notify import endpoints, render, secrets
from registry.notify.errors import EndpointExists
from registry.notify.render import Message
from tests.registry.notify.support import add

MESSAGE = Message(
    "7d1f9a52-3c2e-4d8b-9d5e-0d6a3b2f1e10",
    "canary.promoted",
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    {
        "tenant": {"id": "t", "slug": "acme"},
        "version": 2,
        "split_before": {"1": 50, "2": 50},
        "split_after": {"2": 100},
        "actor": "auto",
        "reason": "success rate 0.990 over 200 requests meets 0.9",
    },
)


def test_the_signature_verifies_with_standardwebhooks() -> None:
    secret = secrets.new_signing_secret()
    now = datetime.now(UTC)
    request = render.webhook_request(MESSAGE, secret, now)
    verified = Webhook(secret).verify(request.body, request.headers)
    assert verified["type"] == "canary.promoted"
    assert verified["timestamp"] == "2026-01-02T03:04:05+00:00"
    assert verified["data"]["split_after"] == {"2": 100}
    assert request.headers["webhook-id"] == MESSAGE.id
    assert request.headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert request.headers["webhook-signature"].startswith("v1,")
    other = secrets.new_signing_secret()
    with pytest.raises(Exception, match="signature"):
        Webhook(other).verify(request.body, request.headers)


def test_slack_text_has_the_split_the_reason_and_the_dashboard_link() -> None:
    request = render.request_for("slack", MESSAGE, None, datetime.now(UTC), "https://ftd.example/")
    text_ = json.loads(request.body)["text"]
    assert text_.splitlines() == [
        "*acme*: canary v2 promoted",
        "v1 50%, v2 50% → v2 100%",
        "Reason: success rate 0.990 over 200 requests meets 0.9",
        "By: auto",
        "<https://ftd.example/tenants/acme|Open acme in ftdeploy>",
    ]
    assert "webhook-signature" not in request.headers
    bare = json.loads(render.request_for("slack", MESSAGE, None, datetime.now(UTC), None).body)
    assert "tenants/acme" not in bare["text"]


def test_secrets_are_stored_encrypted_and_never_listed(sessions: sessionmaker[Session]) -> None:
    added = add(sessions, "hook")
    assert added.secret is not None and added.secret.startswith("whsec_")
    assert len(secrets.signing_key(added.secret)) == 32
    with sessions() as session:
        raw = session.execute(text("SELECT * FROM ai_notification_endpoints")).one()
        listed = json.dumps(endpoints.list_endpoints(session), ensure_ascii=False)
    stored = " ".join(str(value) for value in raw)
    for leak in (added.secret, secrets.signing_key(added.secret).hex(), "t0k3n"):
        assert leak not in stored
        assert leak not in listed
    assert "https://hooks.example.com/…" in listed


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "ftp://files.example.com/x"}, "invalid url: scheme 'ftp' is not http or https"),
        ({"url": "javascript:alert(1)"}, "scheme 'javascript' is not http or https"),
        ({"url": "https:///no-host"}, "invalid url: has no host"),
        ({"url": "https://u:p@example.com/"}, "must not contain a user name or password"),
        ({"events": ["deployment.exploded"]}, "invalid event type: 'deployment.exploded'"),
        ({"format": "teams"}, "invalid format: 'teams' is not one of webhook, slack"),
        ({"name": "no spaces"}, "invalid endpoint name"),
    ],
)
def test_bad_input_is_refused_and_nothing_stored(
    sessions: sessionmaker[Session], changes: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"name": "hook", "url": "https://example.com/hook"} | changes
    with sessions() as session, session.begin():
        with pytest.raises(InvalidInput, match=message.split(":", 1)[-1].strip()[:20]) as error:
            endpoints.add_endpoint(session, **arguments)  # type: ignore[arg-type]
        assert message in str(error.value)
        assert endpoints.list_endpoints(session) == []


def test_a_duplicate_name_is_refused(sessions: sessionmaker[Session]) -> None:
    add(sessions, "hook")
    with sessions() as session, session.begin(), pytest.raises(EndpointExists):
        endpoints.add_endpoint(session, "hook", "https://example.com/other")
    with sessions() as session:
        assert [row["name"] for row in endpoints.list_endpoints(session)] == ["hook"]
