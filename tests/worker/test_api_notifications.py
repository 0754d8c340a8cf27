"""Notification endpoints through the HTTP API, against the real server, a real worker over
Redis and PostgreSQL, and a receiver on loopback that verifies every signature with
`standardwebhooks`: admin keys only, a scoped key kept to its tenants, the secret shown once,
bad input refused with a specific problem and nothing stored, names unique per owner (a tenant,
or the global endpoints) and reached with it, and replay of what failed or was missed while
disabled, with the same webhook-ids, in order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.worker.api_stack import ApiStack, add_tenant, api_stack
from tests.worker.notify_receiver import receiver
from worker import cli

pytestmark = pytest.mark.e2e

ENDPOINTS = "/v1/notifications/endpoints"


@pytest.fixture(scope="module")
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiStack]:
    with api_stack(
        request,
        tmp_path_factory.mktemp("api-notify"),
        notify_encryption_key="api-notify-key",
        notify_retry_schedule_seconds="0.5,1,1,2",
        notify_timeout_seconds=2,
    ) as stack:
        for slug in ("acme", "beta", "story"):
            add_tenant(slug, versions=0)
        stack.key("admin", "admin")
        stack.key("admin-acme", "admin", "acme")
        stack.key("operator", "operate")
        yield stack


def _problem(response: httpx2.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:ftdeploy:problem:{kind}", body
    return body


def _names(client: httpx2.Client, **params: str) -> list[str]:
    response = client.get(ENDPOINTS, params=params)
    assert response.status_code == 200, response.text
    return [e["name"] for e in response.json()]


def test_an_admin_adds_tests_reads_disables_and_removes_an_endpoint(api: ApiStack) -> None:
    with receiver() as server, api.client("admin") as client:
        created = client.post(
            ENDPOINTS,
            json={
                "name": "acme-ops",
                "url": server.url,
                "tenant": "acme",
                "events": ["tenant.paused"],
            },
        )
        assert created.status_code == 201, created.text
        assert created.headers["location"] == f"{ENDPOINTS}/acme-ops?tenant=acme"
        assert created.headers["cache-control"] == "no-store"
        body = created.json()
        secret = server.secret = body["secret"]
        assert secret.startswith("whsec_") and body["tenant"] == "acme"
        assert body["events"] == ["tenant.paused"] and body["enabled"] is True

        tested = client.post(f"{ENDPOINTS}/acme-ops/test").json()
        assert tested["status_code"] == 200 and tested["outcome"] == "delivered"
        [request] = server.requests
        assert request.verified and request.type == "notification.test"
        assert request.webhook_id == tested["webhook_id"]

        shown = client.get(f"{ENDPOINTS}/acme-ops").json()
        assert shown == {k: v for k, v in body.items() if k != "secret"}
        listed = client.get(ENDPOINTS)
        for text in (listed.text, client.get(f"{ENDPOINTS}/acme-ops").text):
            assert secret not in text and "/hooks/ftdeploy" not in text
        assert client.get(f"{ENDPOINTS}/acme-ops/deliveries").json() == []

        disabled = client.post(f"{ENDPOINTS}/acme-ops/disable", json={"reason": "moving"})
        assert disabled.status_code == 200, disabled.text
        assert disabled.json()["disabled_reason"] == "disabled by admin: moving"
        assert client.post(f"{ENDPOINTS}/acme-ops/enable").json()["enabled"] is True
        removed = client.delete(f"{ENDPOINTS}/acme-ops")
        assert removed.json() == {"name": "acme-ops", "removed": True}
        _problem(client.get(f"{ENDPOINTS}/acme-ops"), 404, "endpoint-not-found")
    with api.client("operator") as client:
        _problem(client.get(ENDPOINTS), 403, "forbidden")
        _problem(client.post(ENDPOINTS, json={"name": "x", "url": server.url}), 403, "forbidden")
    log = api.server.log()
    assert secret not in log and secret.removeprefix("whsec_") not in log
    assert "/hooks/ftdeploy" not in log


def test_bad_input_is_a_specific_problem_and_stores_nothing(api: ApiStack) -> None:
    ok = {"name": "beta-ok", "url": "https://example.com/h", "tenant": "beta"}
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({**ok, "name": "x1", "url": "ftp://example.com/h"}, 422, "url", "scheme 'ftp'"),
        ({**ok, "name": "x2", "url": "example.com/h"}, 422, "url", "scheme 'none'"),
        ({**ok, "name": "x3", "events": ["canary.exploded"]}, 422, "event type",
         "'canary.exploded' is not one of"),
        ({**ok, "name": "x4", "format": "teams"}, 422, "format", "'teams' is not one of"),
        ({**ok, "name": "bad name!"}, 422, "endpoint name", "is not 1-63 letters"),
    ]  # fmt: skip
    with api.client("admin") as client:
        assert client.post(ENDPOINTS, json=ok).status_code == 201
        before = client.get(ENDPOINTS).json()
        for payload, status, field, text in cases:
            body = _problem(client.post(ENDPOINTS, json=payload), status, "invalid-input")
            assert body["field"] == field and text in body["detail"], body
        dup = _problem(client.post(ENDPOINTS, json=ok), 409, "endpoint-exists")
        assert dup["detail"] == "notification endpoint already exists: 'beta-ok'"
        nobody = _problem(
            client.post(ENDPOINTS, json={**ok, "name": "x5", "tenant": "nobody"}),
            404,
            "tenant-not-found",
        )
        assert nobody["detail"] == "tenant not found: 'nobody'"
        _problem(client.post(ENDPOINTS, json={**ok, "nope": 1}), 422, "invalid-request")

        replay = f"{ENDPOINTS}/beta-ok/replay"
        body = _problem(client.post(replay, json={"since": "yesterday"}), 422, "invalid-input")
        assert body["field"] == "since"
        _problem(client.post(replay, json={"event": "not-an-id"}), 422, "invalid-input")
        missing = "00000000-0000-4000-8000-000000000000"
        _problem(client.post(replay, json={"event": missing}), 404, "notification-not-found")
        client.post(f"{ENDPOINTS}/beta-ok/disable")
        body = _problem(client.post(replay), 409, "endpoint-disabled")
        assert "enable it, then replay" in body["detail"]
        _problem(client.get(f"{ENDPOINTS}/beta-ok/deliveries?status=lost"), 422, "invalid-request")
        assert [e for e in client.get(ENDPOINTS).json() if e["name"] != "beta-ok"] == [
            e for e in before if e["name"] != "beta-ok"
        ]
        assert client.delete(f"{ENDPOINTS}/beta-ok").status_code == 200


def test_a_scoped_admin_sees_and_manages_only_its_tenants_endpoints(api: ApiStack) -> None:
    url = "https://example.com/h"
    with api.client("admin") as client:
        for name, tenant in (("acme-mine", "acme"), ("beta-theirs", "beta"), ("all-of-them", None)):
            payload = {"name": name, "url": url, **({"tenant": tenant} if tenant else {})}
            assert client.post(ENDPOINTS, json=payload).status_code == 201
    with api.client("admin-acme") as client:
        assert _names(client) == ["acme-mine"]
        assert _names(client, tenant="acme") == ["acme-mine"]
        absent = _problem(
            client.get(ENDPOINTS, params={"tenant": "nobody"}), 404, "tenant-not-found"
        )
        hidden = _problem(client.get(ENDPOINTS, params={"tenant": "beta"}), 404, "tenant-not-found")
        assert hidden["detail"].replace("beta", "X") == absent["detail"].replace("nobody", "X")
        for name in ("beta-theirs", "all-of-them"):
            for method, path in (
                ("GET", ""),
                ("GET", "/deliveries"),
                ("POST", "/test"),
                ("POST", "/enable"),
                ("POST", "/disable"),
                ("POST", "/replay"),
                ("DELETE", ""),
            ):
                seen = client.request(method, f"{ENDPOINTS}/{name}{path}")
                gone = client.request(method, f"{ENDPOINTS}/nobody-hook{path}")
                assert seen.status_code == gone.status_code == 404, (method, path, seen.text)
                assert seen.text.replace(name, "X") == gone.text.replace("nobody-hook", "X")
        body = _problem(client.post(ENDPOINTS, json={"name": "glob", "url": url}), 403, "forbidden")
        assert "must name the endpoint's tenant" in body["detail"]
        _problem(
            client.post(ENDPOINTS, json={"name": "sneaky", "url": url, "tenant": "beta"}),
            404,
            "tenant-not-found",
        )
        made = client.post(ENDPOINTS, json={"name": "acme-two", "url": url, "tenant": "acme"})
        assert made.status_code == 201 and made.json()["secret"].startswith("whsec_")
        assert client.delete(f"{ENDPOINTS}/acme-two").status_code == 200
    with api.client("admin") as client:
        assert {"beta-theirs", "all-of-them"} <= set(_names(client))
        for name in ("acme-mine", "beta-theirs", "all-of-them"):
            assert client.get(f"{ENDPOINTS}/{name}").json()["enabled"] is True
            client.delete(f"{ENDPOINTS}/{name}")


def test_one_name_per_owner_reached_with_its_owner(api: ApiStack) -> None:
    url = "https://example.com/h"
    with api.client("admin") as client:
        locations = {}
        for tenant in ("acme", "beta", None):
            payload = {"name": "slack", "url": url, **({"tenant": tenant} if tenant else {})}
            made = client.post(ENDPOINTS, json=payload)
            assert made.status_code == 201, made.text
            locations[tenant] = made.headers["location"]
        assert locations == {
            "acme": f"{ENDPOINTS}/slack?tenant=acme",
            "beta": f"{ENDPOINTS}/slack?tenant=beta",
            None: f"{ENDPOINTS}/slack?global=true",
        }
        for tenant, location in locations.items():
            assert client.get(location).json()["tenant"] == tenant
        dup = _problem(
            client.post(ENDPOINTS, json={"name": "slack", "url": url}), 409, "endpoint-exists"
        )
        assert dup["detail"] == "notification endpoint already exists: 'slack'"
        before = client.get(ENDPOINTS).json()
        for method, path in (
            ("GET", ""),
            ("GET", "/deliveries"),
            ("POST", "/test"),
            ("POST", "/enable"),
            ("POST", "/disable"),
            ("POST", "/replay"),
            ("DELETE", ""),
        ):
            body = _problem(
                client.request(method, f"{ENDPOINTS}/slack{path}"), 409, "endpoint-ambiguous"
            )
            assert "(the global endpoints, tenant 'acme', tenant 'beta')" in body["detail"]
            assert "?tenant=SLUG" in body["detail"] and "?global=true" in body["detail"]
        assert client.get(ENDPOINTS).json() == before  # nothing changed
        both = client.get(f"{ENDPOINTS}/slack", params={"tenant": "acme", "global": "true"})
        assert _problem(both, 422, "invalid-input")["field"] == "tenant"
        disabled = client.post(f"{ENDPOINTS}/slack/disable?tenant=beta", json={"reason": "x"})
        assert disabled.json()["tenant"] == "beta" and disabled.json()["enabled"] is False
        assert client.post(f"{ENDPOINTS}/slack/enable?tenant=beta").json()["enabled"] is True
    with api.client("admin-acme") as client:
        # Its own, without naming it; its own name taken; the others as absent.
        assert client.get(f"{ENDPOINTS}/slack").json()["tenant"] == "acme"
        assert client.get(f"{ENDPOINTS}/slack?tenant=acme").json()["tenant"] == "acme"
        _problem(
            client.post(ENDPOINTS, json={"name": "slack", "url": url, "tenant": "acme"}),
            409,
            "endpoint-exists",
        )
        hidden = _problem(client.get(f"{ENDPOINTS}/slack?global=true"), 404, "endpoint-not-found")
        nothing = client.get(f"{ENDPOINTS}/nobody-hook?global=true").json()
        assert hidden["detail"].replace("slack", "X") == nothing["detail"].replace(
            "nobody-hook", "X"
        )
        other = _problem(client.get(f"{ENDPOINTS}/slack?tenant=beta"), 404, "tenant-not-found")
        assert other["detail"] == "tenant not found: 'beta'"
        assert client.delete(f"{ENDPOINTS}/slack").json() == {"name": "slack", "removed": True}
    with api.client("admin") as client:
        assert client.delete(f"{ENDPOINTS}/slack?global=true").status_code == 200
        assert client.get(f"{ENDPOINTS}/slack").json()["tenant"] == "beta"  # the one left
        assert client.delete(f"{ENDPOINTS}/slack").status_code == 200


def test_replay_sends_what_failed_and_what_was_missed_with_the_same_ids_in_order(
    api: ApiStack,
) -> None:
    with receiver() as server, api.client("admin") as client:
        server.answer(400)  # the first notification is refused: given up at once
        made = client.post(
            ENDPOINTS, json={"name": "story-hook", "url": server.url, "tenant": "story"}
        )
        server.secret = made.json()["secret"]
        assert cli.main(["tenant", "pause", "story", "--reason", "freeze"]) == 0

        [failed] = api.stack.wait(
            lambda: [r for r in deliveries_of(api, "story-hook") if r["status"] == "failed"],
            30,
            "the refused one",
        )
        assert [a["status_code"] for a in failed["history"]] == [400]
        assert client.post(f"{ENDPOINTS}/story-hook/disable").status_code == 200
        assert cli.main(["tenant", "resume", "story"]) == 0  # written while it is disabled
        _problem(client.post(f"{ENDPOINTS}/story-hook/replay"), 409, "endpoint-disabled")
        assert len(deliveries_of(api, "story-hook")) == 1  # the refusal changed nothing

        assert client.post(f"{ENDPOINTS}/story-hook/enable").status_code == 200
        answer = client.post(f"{ENDPOINTS}/story-hook/replay", json={"since": "1h"})
        assert answer.status_code == 202, answer.text
        replayed_body = answer.json()
        assert replayed_body["requeued"] == 1 and replayed_body["missed"] == 1
        api.stack.wait(lambda: len(server.requests) == 3, 30, "both replayed")

        def all_delivered() -> list[dict[str, Any]] | None:
            rows = deliveries_of(api, "story-hook")
            return rows if all(r["status"] == "delivered" for r in rows) else None

        rows = api.stack.wait(all_delivered, 30, "both recorded delivered")
    assert all(r.verified for r in server.requests)
    refused, *replayed = server.requests
    assert [r.type for r in replayed] == ["tenant.paused", "tenant.resumed"]
    first, second = replayed
    # The same webhook-id as the attempt that was refused; then the missed one, in order.
    assert first.webhook_id == refused.webhook_id == failed["webhook_id"]
    # In order; the number between went to the notice of this endpoint's own disabling, which
    # it is not sent.
    assert second.data["sequence"] == first.data["sequence"] + 2
    assert set(replayed_body["webhook_ids"]) == {first.webhook_id, second.webhook_id}
    by_id = {r["webhook_id"]: r for r in rows}
    assert [a["status_code"] for a in by_id[first.webhook_id]["history"]] == [400, 200]


def deliveries_of(api: ApiStack, name: str) -> list[dict[str, Any]]:
    with api.client("admin") as client:
        rows: list[dict[str, Any]] = client.get(f"{ENDPOINTS}/{name}/deliveries").json()
    return rows
