"""The HTTP API against the real server process (uvicorn on loopback), PostgreSQL, Redis and a
real worker: each endpoint's happy path and refusals."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx2
import pytest

from tests.worker.api_stack import ApiStack, add_tenant, api_stack
from worker import cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiStack]:
    tmp = tmp_path_factory.mktemp("api")
    with api_stack(request, tmp, stream_heartbeat_seconds=1, api_key_cache_seconds=0.2) as stack:
        add_tenant("acme", versions=2)
        add_tenant("beta")
        stack.key("admin", "admin")
        stack.key("reader", "read")
        stack.key("serve-acme", "serve", "acme")
        yield stack


def _problem(response: httpx2.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    assert "Traceback" not in response.text
    return body  # type: ignore[no-any-return]


def test_resolve_from_the_cache(api: ApiStack) -> None:
    with api.client("serve-acme") as client:
        first = client.get("/v1/tenants/acme/resolve", params={"subject": "user-1"})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["tenant"] == "acme" and body["version"] == 2
        assert body["reason"] == "single_version" and body["model"].startswith("ft:")
        assert client.get("/v1/tenants/acme/resolve").json()["model"] == body["model"]


def test_resolve_with_nothing_live_says_no_model(api: ApiStack) -> None:
    add_tenant("empty", versions=0)
    with api.client("admin") as client:
        body = client.get("/v1/tenants/empty/resolve").json()
    assert body == {"tenant": "empty", "model": None, "version": None, "reason": "no_model"}


def test_routing_document_with_etag_and_304(api: ApiStack) -> None:
    with api.client("serve-acme") as client:
        response = client.get("/v1/tenants/acme/routing")
        assert response.status_code == 200, response.text
        document = response.json()
        etag = response.headers["etag"]
        assert document["etag"] == etag and etag.startswith('"')
        assert [v["version"] for v in document["versions"]] == [2]
        assert int(document["versions"][0]["a"]) > 0 and document["prime"].isdigit()
        again = client.get("/v1/tenants/acme/routing", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        other = client.get("/v1/tenants/acme/routing", headers={"If-None-Match": '"nope"'})
        assert other.status_code == 200


def test_refusals_no_key_wrong_key_revoked_key_low_role(api: ApiStack) -> None:
    path = "/v1/tenants/acme/resolve"
    with api.client(None) as client:
        body = _problem(client.get(path), 401)
        assert "no API key" in str(body["detail"])
        assert client.get(path).headers["www-authenticate"].startswith("Bearer")
    with api.client("ftd_0123456789abcdef_" + "x" * 43) as client:
        _problem(client.get(path), 401)
    with api.client("not-even-a-key") as client:
        _problem(client.get(path), 401)
    revoked = api.key("short-lived", "serve")
    with api.client(revoked) as client:
        assert client.get(path).status_code == 200
        assert cli.main(["keys", "revoke", "short-lived"]) == 0
        api.stack.wait(
            lambda: client.get(path).status_code == 401, 5, "the revoked key to be refused"
        )
    with api.client("serve-acme") as client:
        body = _problem(client.get("/v1/tenants/acme/versions"), 403)
        assert "needs a read key" in str(body["detail"])
    with api.client("reader") as client:
        _problem(client.post("/v1/tenants/acme/rollback", json={}), 403)
    log = api.server.log()
    for key in api.keys.values():
        assert key not in log and key.split("_", 2)[2] not in log


def test_problems_for_bad_input_unknown_tenant_and_conflicts(api: ApiStack) -> None:
    with api.client("admin") as client:
        body = _problem(client.get("/v1/tenants/nope/resolve"), 404)
        assert body["detail"] == "tenant not found: 'nope'"
        body = _problem(client.get("/v1/tenants/NOT_A_SLUG/versions"), 422)
        assert body["type"] == "urn:ftdeploy:problem:invalid-request"
        assert body["errors"][0]["loc"] == ["path", "tenant"]
        body = _problem(client.post("/v1/tenants/acme/promote", json={"version": "x"}), 422)
        assert body["field"] == "version" and "'x' is not a version number" in str(body["detail"])
        body = _problem(client.post("/v1/tenants/acme/promote", json={"verzion": 1}), 422)
        assert "invalid request" in str(body["detail"])
        _problem(client.post("/v1/tenants", json={"slug": "acme"}), 409)
        _problem(client.post("/v1/tenants/acme/outcomes", content=b"{not json"), 422)
        _problem(client.get("/v1/no-such-thing"), 404)
        _problem(client.post("/v1/tenants/acme/promote", json={"version": 9}), 404)


def test_operator_reads(api: ApiStack) -> None:
    with api.client("reader") as client:
        assert {t["slug"] for t in client.get("/v1/tenants").json()} >= {"acme", "beta"}
        policy = client.get("/v1/tenants/acme/policy").json()
        assert policy["tenant"] == "acme" and policy["require_evaluation"] is False
        listed = client.get("/v1/tenants/acme/versions").json()
        assert [(v["version"], v["status"]) for v in listed] == [
            (2, "production"),
            (1, "deprecated"),
        ] or sorted(v["version"] for v in listed) == [1, 2]
        assert client.get("/v1/tenants/acme/history").json()[0]["action"]
        assert isinstance(client.get("/v1/tenants/acme/activity").json(), list)
        assert isinstance(client.get("/v1/events", params={"state": "done"}).json(), list)
        assert client.get("/v1/status").json() == []


def test_admin_adds_a_tenant_and_changes_its_policy(api: ApiStack) -> None:
    with api.client("admin") as client:
        made = client.post("/v1/tenants", json={"slug": "gamma", "strategy": "canary"})
        assert made.status_code == 201, made.text
        assert made.json()["strategy"] == "canary"
        changed = client.patch("/v1/tenants/gamma/policy", json={"canary_percent": 20})
        assert changed.json()["canary_percent"] == 20
        _problem(client.patch("/v1/tenants/gamma/policy", json={"canary_percent": 0}), 422)
    with api.client("reader") as client:
        _problem(client.patch("/v1/tenants/gamma/policy", json={"canary_percent": 30}), 403)


def test_promote_and_rollback_are_queued_operations(api: ApiStack) -> None:
    add_tenant("ops", versions=2)
    api.key("ci-bot", "operate", "ops")
    with api.client("ci-bot") as client:
        queued = client.post(
            "/v1/tenants/ops/promote",
            json={"version": "v1", "traffic_percent": 30, "reason": "bring v1 back a little"},
        )
        assert queued.status_code == 202, queued.text
        location = queued.headers["location"]
        assert location == f"/v1/operations/{queued.json()['operation_id']}"

        def finished(url: str) -> dict[str, object] | None:
            body = client.get(url).json()
            return body if body["status"] in ("succeeded", "failed") else None

        done = api.stack.wait(lambda: finished(location), 30, "the promotion")
        assert done["status"] == "succeeded" and done["actor"] == "ci-bot"
        assert api.stack.split("ops") == {1: 30, 2: 70}
        back = client.post("/v1/tenants/ops/rollback", json={"reason": "v1 regressed"})
        assert back.status_code == 202
        rolled = api.stack.wait(lambda: finished(back.headers["location"]), 30, "the rollback")
        assert rolled["status"] == "succeeded"
    with api.client("admin") as client:
        trail = client.get("/v1/tenants/ops/history").json()
    assert trail[0]["reason"] == "v1 regressed" and trail[0]["actor"] == "operator:ci-bot"
    assert trail[1]["reason"] == "bring v1 back a little"


def test_job_finished_and_evaluation_from_the_pipeline(api: ApiStack) -> None:
    with api.client("admin") as client:
        client.post("/v1/tenants", json={"slug": "pipe"}).raise_for_status()
        api.stack.fake.add_job("ftjob-api-1", statuses=("succeeded",), tenant="pipe")
        queued = client.post("/v1/jobs/ftjob-api-1/finished", json={"tenant": "pipe"})
        assert queued.status_code == 202 and queued.json()["queued"] is True
        api.stack.wait(
            lambda: (
                (api.stack.deployment("ftjob-api-1") or None)
                and api.stack.deployment("ftjob-api-1").status == "awaiting_evaluation"
            ),  # type: ignore[union-attr]
            30,
            "the job to wait for its evaluation",
        )
        recorded = client.post(
            "/v1/jobs/ftjob-api-1/evaluation",
            json={"recommendation": "approve", "metrics": {"accuracy": 0.93}},
        )
        assert recorded.status_code == 201, recorded.text
        assert recorded.json()["metrics"] == {"accuracy": 0.93}
        api.stack.wait(lambda: api.stack.split("pipe") == {1: 100}, 30, "the deployment")
        _problem(
            client.post("/v1/jobs/ftjob-none/evaluation", json={"recommendation": "approve"}), 404
        )
        _problem(client.post("/v1/jobs/bad id/finished", json={}), 422)


def test_an_outcome_batch_retried_five_times_counts_once(api: ApiStack) -> None:
    batch = {
        "batch_id": str(uuid.uuid4()),
        "records": [
            {"model": "v2", "success": True, "count": 7, "latency_ms": 120.0},
            {"version": 2, "success": False, "score": 0.2},
            {"version": 9, "success": True},
        ],
    }
    answers = []
    with api.client("serve-acme") as client:
        for _ in range(5):
            response = client.post("/v1/tenants/acme/outcomes", json=batch)
            assert response.status_code == 200, response.text
            answers.append(response.json())
        _problem(client.post("/v1/outcomes", json={**batch, "tenant": "beta"}), 404)
        again = client.post("/v1/outcomes", json={**batch, "tenant": "acme"})
        assert again.json()["duplicate"] is True
    assert [a["duplicate"] for a in answers] == [False, True, True, True, True]
    assert {(a["recorded"], a["refused_count"]) for a in answers} == {(8, 1)}
    assert answers[0]["refused"][0]["index"] == 2
    from registry.models import OutcomeCounter

    assert api.stack.count(OutcomeCounter, "acme") >= 1
    with api.client("admin") as client:
        # Two records counted 7 + 1 requests, once.
        from sqlalchemy import func, select

        from registry.db import unit_of_work

        with unit_of_work() as session:
            total = session.scalar(select(func.sum(OutcomeCounter.requests)))
        assert total == 8
        assert client.get("/healthz").status_code == 200


def test_ofrep_flag_per_tenant(api: ApiStack) -> None:
    with api.client("serve-acme") as client:
        flag = "/ofrep/v1/evaluate/flags/acme"
        ok = client.post(flag, json={"context": {"targetingKey": "user-7"}})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["key"] == "acme" and body["variant"] == "v2" and body["reason"] == "STATIC"
        assert body["value"].startswith("ft:") and body["metadata"]["tenant"] == "acme"
        missing = client.post("/ofrep/v1/evaluate/flags/beta", json={"context": {}})
        assert missing.status_code == 404 and missing.json()["errorCode"] == "FLAG_NOT_FOUND"
        bad = client.post(flag, content=b"{nope", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["errorCode"] == "PARSE_ERROR"
        wrong = client.post(flag, json={"context": {"targetingKey": 5}})
        assert wrong.status_code == 400 and wrong.json()["errorCode"] == "INVALID_CONTEXT"
    with httpx2.Client(base_url=api.url, headers={"X-API-Key": api.keys["serve-acme"]}) as client:
        assert client.post(flag, json={}).status_code == 200


def test_stream_shows_a_cli_promote_of_a_visible_tenant_only(api: ApiStack) -> None:
    add_tenant("live", versions=2)
    add_tenant("hidden", versions=2)
    api.key("serve-live", "serve", "live")
    seen: list[dict[str, object]] = []
    comments: list[str] = []
    connected = threading.Event()
    stop = threading.Event()

    def listen() -> None:
        with api.client("serve-live") as client, client.stream("GET", "/v1/stream") as response:
            assert response.status_code == 200
            kind = None
            for line in response.iter_lines():
                if line.startswith(":"):
                    comments.append(line)
                    connected.set()
                elif line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind == "routing":
                    seen.append(json.loads(line.split(":", 1)[1]))
                if stop.is_set() and seen:
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert connected.wait(10), "the stream did not open"
    assert cli.main(["promote", "hidden", "1", "--wait", "--timeout", "30"]) == 0
    assert cli.main(["promote", "live", "1", "--traffic", "40", "--wait", "--timeout", "30"]) == 0
    with api.client("serve-live") as client:
        etag = client.get("/v1/tenants/live/routing").headers["etag"]
    api.stack.wait(lambda: any(e.get("etag") == etag for e in seen), 15, "the routing event")
    stop.set()
    api.stack.wait(lambda: any("heartbeat" in c for c in comments), 5, "a heartbeat")
    assert {e["tenant"] for e in seen} == {_tenant_id("live")}
    thread.join(10)


def _tenant_id(slug: str) -> str:
    from sqlalchemy import select

    from registry.db import unit_of_work
    from registry.models import Tenant

    with unit_of_work() as session:
        return str(session.scalars(select(Tenant.id).where(Tenant.slug == slug)).one())


def _promoted_at(slug: str) -> datetime:
    """When the tenant's newest traffic change was written (in its transaction, before the
    commit): a propagation measured from it includes the commit."""
    from sqlalchemy import select

    from registry.db import unit_of_work
    from registry.models import Tenant, TrafficEvent

    with unit_of_work() as session:
        return session.scalars(
            select(TrafficEvent.created_at)
            .join(Tenant, Tenant.id == TrafficEvent.tenant_id)
            .where(Tenant.slug == slug)
            .order_by(TrafficEvent.id.desc())
            .limit(1)
        ).one()


def test_stream_announces_a_cli_promote_within_the_propagation_bound(api: ApiStack) -> None:
    """Commit (by the worker, for `ftdeploy promote --wait`) to the event on an open stream,
    measured with the wall clock the worker wrote the audit event with: under 1 s."""
    add_tenant("swift", versions=2)
    api.key("serve-swift", "serve", "swift")
    swift = _tenant_id("swift")
    arrivals: list[tuple[float, dict[str, str]]] = []
    connected = threading.Event()

    def listen() -> None:
        with api.client("serve-swift") as client, client.stream("GET", "/v1/stream") as response:
            kind = None
            for line in response.iter_lines():
                if line.startswith(":"):
                    connected.set()
                elif line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind == "routing":
                    arrivals.append((time.time(), json.loads(line.split(":", 1)[1])))
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert connected.wait(10), "the stream did not open"
    assert cli.main(["promote", "swift", "1", "--traffic", "25", "--wait", "--timeout", "30"]) == 0
    api.stack.wait(lambda: arrivals, 5, "the routing event")
    arrived, data = arrivals[0]
    with api.client("serve-swift") as client:
        etag = client.get("/v1/tenants/swift/routing").headers["etag"]
    assert data == {"tenant": swift, "etag": etag}
    propagation = arrived - _promoted_at("swift").timestamp()
    print(f"\nstream propagation, audit event written -> SSE event received: {propagation:.3f} s")
    assert 0 <= propagation < 1.0, propagation
    thread.join(5)


def test_stream_says_resync_when_the_servers_feed_reconnects(api: ApiStack) -> None:
    """The server's change feed loses its connection: changes may have been missed while it
    reconnects, so every stream is told to revalidate (`event: resync`)."""
    from sqlalchemy import text

    from registry.change_feed import APPLICATION_NAME
    from registry.db import unit_of_work

    events: list[str] = []
    connected = threading.Event()

    def listen() -> None:
        with api.client("serve-acme") as client, client.stream("GET", "/v1/stream") as response:
            for line in response.iter_lines():
                if line.startswith(":"):
                    connected.set()
                elif line.startswith("event:"):
                    events.append(line.split(":", 1)[1].strip())
                    if events[-1] == "resync":
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert connected.wait(10), "the stream did not open"
    with unit_of_work() as session:  # every listening feed (the server's among them) is cut
        cut = session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = :name"
            ),
            {"name": APPLICATION_NAME},
        ).all()
    assert cut, "no routing feed was listening"
    api.stack.wait(lambda: "resync" in events, 15, "the resync event")
    thread.join(5)
