"""Tenant isolation over every route of the app, generated from `app.routes`: keys scoped to
tenant `alpha` (a `serve` key and an `admin` key) can neither read nor change tenant `beta`
through any endpoint, nor learn what beta names things (an endpoint made for alpha under beta's
name is answered as under a fresh one). A route with no entry in the table fails the test, and
so does a route that declares no authorization dependency."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy import func, select

from registry import keys, operations, records, versions
from registry.db import unit_of_work
from registry.jobs import events
from registry.models import (
    Evaluation,
    FinetuningRun,
    JobEvent,
    KeyRole,
    Operation,
    OutcomeCounter,
    Tenant,
)
from registry.notify import endpoints as notify
from registry.notify.models import NotificationDelivery
from registry.tenants import get_policy
from tests.worker.api_stack import ApiStack, add_tenant, api_stack
from worker.http.app import create_app
from worker.http.auth import ROLE_MARK

pytestmark = pytest.mark.e2e

# Served without a key, on purpose: the receiver (signed by OpenAI), health, metrics, the docs.
PUBLIC = {
    ("POST", "/webhooks/openai"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    # The dashboard's sign-in and sign-out (the key is what they check) and its static files.
    ("GET", "/sign-in"),
    ("POST", "/sign-in"),
    ("POST", "/sign-out"),
}
HIDDEN, LISTED, REFUSED, STREAM = "404 as if absent", "left out of the list", "403", "stream"
# Made for alpha under a name beta (or a global endpoint) has, answered as under a fresh name.
AS_FRESH = "as a fresh name"
BATCH = {"batch_id": "iso-1", "records": [{"version": 1, "success": True, "count": 3}]}
HOOK = {"name": "alpha-new-hook", "url": "https://example.com/hook"}


@dataclass(frozen=True)
class Case:
    path: str
    expect: str
    json: Any = None
    ref: str = "beta"  # what names beta's object; replaced by `missing` for the comparison
    missing: str = "nobody"


# (method, route path) -> the requests that try to reach tenant beta through it.
TABLE: dict[tuple[str, str], list[Case]] = {
    ("GET", "/v1/tenants/{tenant}/resolve"): [Case("/v1/tenants/beta/resolve", HIDDEN)],
    ("GET", "/v1/tenants/{tenant}/routing"): [Case("/v1/tenants/beta/routing", HIDDEN)],
    ("GET", "/v1/stream"): [Case("/v1/stream", STREAM)],
    ("POST", "/v1/tenants/{tenant}/outcomes"): [Case("/v1/tenants/beta/outcomes", HIDDEN, BATCH)],
    ("POST", "/v1/outcomes"): [Case("/v1/outcomes", HIDDEN, {**BATCH, "tenant": "beta"})],
    ("POST", "/ofrep/v1/evaluate/flags/{key}"): [
        Case("/ofrep/v1/evaluate/flags/beta", HIDDEN, {"context": {"targetingKey": "u1"}})
    ],
    ("GET", "/v1/tenants"): [Case("/v1/tenants", LISTED)],
    ("POST", "/v1/tenants"): [Case("/v1/tenants", REFUSED, {"slug": "beta-two"})],
    ("GET", "/v1/tenants/{tenant}/policy"): [Case("/v1/tenants/beta/policy", HIDDEN)],
    ("PATCH", "/v1/tenants/{tenant}/policy"): [
        Case("/v1/tenants/beta/policy", HIDDEN, {"canary_percent": 50})
    ],
    ("GET", "/v1/tenants/{tenant}/versions"): [Case("/v1/tenants/beta/versions", HIDDEN)],
    ("GET", "/v1/tenants/{tenant}/history"): [Case("/v1/tenants/beta/history", HIDDEN)],
    ("GET", "/v1/tenants/{tenant}/activity"): [Case("/v1/tenants/beta/activity", HIDDEN)],
    ("GET", "/v1/events"): [Case("/v1/events", LISTED)],
    ("GET", "/v1/status"): [Case("/v1/status", LISTED), Case("/v1/status?tenant=beta", HIDDEN)],
    ("POST", "/v1/tenants/{tenant}/promote"): [
        Case("/v1/tenants/beta/promote", HIDDEN, {"version": 1, "traffic_percent": 100})
    ],
    ("POST", "/v1/tenants/{tenant}/rollback"): [
        Case("/v1/tenants/beta/rollback", HIDDEN, {"reason": "try"})
    ],
    ("GET", "/v1/operations"): [
        Case("/v1/operations", LISTED),
        Case("/v1/operations?tenant=beta", HIDDEN),
    ],
    ("POST", "/v1/operations/{operation_id}/cancel"): [
        Case(
            "/v1/operations/{beta_operation}/cancel",
            HIDDEN,
            ref="{beta_operation}",
            missing="{uuid}",
        )
    ],
    ("GET", "/v1/operations/{operation_id}"): [
        Case("/v1/operations/{beta_operation}", HIDDEN, ref="{beta_operation}", missing="{uuid}")
    ],
    ("POST", "/v1/jobs/{job_id}/finished"): [
        Case("/v1/jobs/ftjob-iso-new/finished", HIDDEN, {"tenant": "beta"}),
        Case("/v1/jobs/ftjob-iso-new/finished", REFUSED, {}),
    ],
    # The dashboard's pages, with a key in the header as a script would send it.
    ("GET", "/"): [Case("/", LISTED)],
    ("GET", "/fragments/fleet"): [Case("/fragments/fleet", LISTED)],
    ("GET", "/tenants/{tenant_ref}"): [Case("/tenants/beta", HIDDEN)],
    ("GET", "/tenants/{tenant_ref}/fragments/live"): [Case("/tenants/beta/fragments/live", HIDDEN)],
    ("GET", "/tenants/{tenant_ref}/preview"): [
        Case("/tenants/beta/preview?action=rollback", HIDDEN)
    ],
    ("GET", "/tenants/{tenant_ref}/operations/{operation_id}"): [
        Case("/tenants/beta/operations/{beta_operation}", HIDDEN)
    ],
    ("POST", "/tenants/{tenant_ref}/promote"): [
        Case("/tenants/beta/promote", HIDDEN, {"version": 1, "percent": 100, "reason": "x"})
    ],
    ("POST", "/tenants/{tenant_ref}/rollback"): [
        Case("/tenants/beta/rollback", HIDDEN, {"reason": "x"})
    ],
    ("POST", "/tenants/{tenant_ref}/switch"): [
        Case("/tenants/beta/switch", HIDDEN, {"version": 1, "reason": "x"})
    ],
    ("POST", "/tenants/{tenant_ref}/pause"): [Case("/tenants/beta/pause", HIDDEN, {"reason": "x"})],
    ("POST", "/tenants/{tenant_ref}/resume"): [
        Case("/tenants/beta/resume", HIDDEN, {"reason": "x"})
    ],
    ("GET", "/dashboard/stream"): [Case("/dashboard/stream", STREAM)],
    # Notification endpoints: beta's, and a global one (every tenant's events: unscoped only).
    ("GET", "/v1/notifications/endpoints"): [
        Case("/v1/notifications/endpoints", LISTED),
        Case("/v1/notifications/endpoints?tenant=beta", HIDDEN),
    ],
    ("POST", "/v1/notifications/endpoints"): [
        Case("/v1/notifications/endpoints", HIDDEN, {**HOOK, "tenant": "beta"}),
        Case("/v1/notifications/endpoints", REFUSED, HOOK),
        *(
            Case(
                "/v1/notifications/endpoints",
                AS_FRESH,
                {**HOOK, "name": name, "tenant": "alpha"},
                name,
                "alpha-fresh-hook",
            )
            for name in ("beta-hook", "global-beta-hook")
        ),
    ],
    **{
        (method, f"/v1/notifications/endpoints/{{name}}{tail}"): [
            *(
                Case(f"/v1/notifications/endpoints/{name}{tail}", HIDDEN, body, name, "nobody-hook")
                for name in ("beta-hook", "global-beta-hook")
            ),
            # Naming the owner: beta as a tenant that does not exist, the global one as absent.
            Case(f"/v1/notifications/endpoints/beta-hook{tail}?tenant=beta", HIDDEN, body),
            Case(
                f"/v1/notifications/endpoints/global-beta-hook{tail}?global=true",
                HIDDEN,
                body,
                "global-beta-hook",
                "nobody-hook",
            ),
        ]
        for method, tail, body in (
            ("GET", "", None),
            ("DELETE", "", None),
            ("POST", "/test", None),
            ("GET", "/deliveries", None),
            ("POST", "/enable", None),
            ("POST", "/disable", {"reason": "x"}),
            ("POST", "/replay", {"since": "1d"}),
        )
    },
    ("POST", "/v1/jobs/{job_id}/evaluation"): [
        Case(
            "/v1/jobs/{beta_job}/evaluation",
            HIDDEN,
            {"recommendation": "reject"},
            ref="{beta_job}",
            missing="ftjob-nobody",
        )
    ],
}


@pytest.fixture(scope="module")
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiStack]:
    tmp = tmp_path_factory.mktemp("isolation")
    with api_stack(
        request, tmp, stream_heartbeat_seconds=1, notify_encryption_key="isolation-key"
    ) as stack:
        add_tenant("alpha")
        # beta: a live canary (v1 90%, v2 10%) with auto-promote, an operation, a job event, a
        # notification endpoint (and a global one, which only unscoped keys see).
        add_tenant("beta", versions=2, strategy="canary", auto_promote=True)
        with unit_of_work() as session:
            operations.queue_operation(session, "beta", "rollback", actor="someone")
            events.accept_event(session, "ftjob-beta-event", "beta", "cli")
            # Receivers that refuse connections: a test send that got through would still fail.
            notify.add_endpoint(session, "beta-hook", "http://127.0.0.1:9/b", tenant_ref="beta")
            # Named so that the list check, which looks for "beta", would see it leak too.
            notify.add_endpoint(session, "global-beta-hook", "http://127.0.0.1:9/g")
        stack.key("serve-alpha", "serve", "alpha")
        stack.key("admin-alpha", "admin", "alpha")
        stack.key("admin-all", "admin")
        yield stack


def _roles(dependant: Dependant) -> list[KeyRole]:
    found = [getattr(dependant.call, ROLE_MARK)] if hasattr(dependant.call, ROLE_MARK) else []
    for child in dependant.dependencies:
        found += _roles(child)
    return found


def _routes() -> dict[tuple[str, str], KeyRole]:
    """Every (method, path) of the app with the role its authorization dependency needs."""
    app = create_app()
    routes: dict[tuple[str, str], KeyRole] = {}
    unguarded = []
    for route in app.routes:
        methods = sorted((getattr(route, "methods", None) or set()) - {"HEAD"})
        path = getattr(route, "path", "")
        for method in methods:
            if not isinstance(route, APIRoute):
                assert (method, path) in PUBLIC, (
                    f"{method} {path} is neither an API route nor public"
                )
                continue
            roles = _roles(route.dependant)
            if len(roles) != 1:
                unguarded.append(f"{method} {path}")
                continue
            routes[(method, path)] = roles[0]
    assert not unguarded, f"routes without exactly one authorization dependency: {unguarded}"
    return routes


def _state(slug: str) -> dict[str, Any]:
    """Everything of a tenant the API could change."""
    with unit_of_work() as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == slug)).one()

        def count(model: Any, *where: Any) -> int:
            return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

        return {
            "versions": [
                (v.version, v.status, v.traffic_percent)
                for v in versions.list_versions(session, slug)
            ],
            "operations": count(Operation, Operation.tenant_id == tenant.id),
            "outcomes": count(OutcomeCounter, OutcomeCounter.tenant_id == tenant.id),
            "evaluations": count(Evaluation),
            "events": count(JobEvent),
            "policy": records.policy(tenant, get_policy(session, tenant.id)),
            "notification endpoints": [
                (e["name"], e["tenant"], e["enabled"], e["disabled_reason"], e["events"])
                for e in notify.list_endpoints(session)
            ],
            "deliveries": count(NotificationDelivery),
        }


def _created(
    client: httpx2.Client, path: str, body: dict[str, Any], name: str, ref: str | None = None
) -> tuple[int, dict[str, Any], str]:
    """Create `body` under `name` (in place of `ref`), then remove it again (only alpha's, so
    later cases meet beta's alone): the status, the record and Location with the name as X, the
    secret and time left out."""
    if ref is not None:
        body = json.loads(json.dumps(body).replace(ref, name))
    response = client.post(path, json=body)
    record = {k: v for k, v in response.json().items() if k not in ("secret", "created_at")}
    if response.status_code == 201:
        with unit_of_work() as session:
            notify.remove_endpoint(session, name, owner="alpha")
    text = json.dumps(record, sort_keys=True).replace(name, "X")
    location = response.headers.get("location", "").replace(name, "X")
    return response.status_code, json.loads(text), location


def _fill(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def _send(client: httpx2.Client, method: str, path: str, body: Any) -> httpx2.Response:
    return (
        client.request(method, path, json=body)
        if body is not None
        else client.request(method, path)
    )


def _stream_sees_nothing_of_beta(api: ApiStack, key: str, path: str = "/v1/stream") -> str:
    with unit_of_work() as session:  # events name tenants by id
        rows = session.execute(select(Tenant.slug, Tenant.id))
        ids = {slug: tenant_id for slug, tenant_id in rows}
    # The API's stream names tenants by id, the dashboard's by slug (what its page carries).
    alpha, beta = (
        (str(ids["alpha"]), str(ids["beta"])) if path == "/v1/stream" else ("alpha", "beta")
    )
    lines: list[str] = []
    opened = threading.Event()
    deadline = time.monotonic() + 8

    def listen() -> None:
        with api.client(key) as client, client.stream("GET", path) as response:
            lines.append(f"status {response.status_code}")
            opened.set()
            for line in response.iter_lines():
                lines.append(line)
                if time.monotonic() > deadline or any(f'"{alpha}"' in x for x in lines):
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert opened.wait(10)
    if lines[0] != "status 200":
        thread.join(5)
        return lines[0]
    time.sleep(0.5)
    with unit_of_work() as session:
        versions.promote(session, "beta", 1, 100, actor="test")
    time.sleep(1.0)
    with unit_of_work() as session:  # and one alpha may see, so we know the stream works
        versions.promote(session, "alpha", 1, 100, actor="test")
    thread.join(10)
    assert not any(f'"{beta}"' in line for line in lines), lines
    assert any(f'"tenant":"{alpha}"' in line.replace(" ", "") for line in lines), lines
    return "200"


def test_scoped_keys_cannot_reach_another_tenant_through_any_route(api: ApiStack) -> None:
    routes = _routes()
    missing = sorted(set(routes) - set(TABLE))
    assert not missing, f"routes with no isolation case (add them to TABLE): {missing}"
    assert not set(TABLE) - set(routes), "TABLE names routes the app no longer has"
    with unit_of_work() as session:
        beta = session.scalars(select(Tenant).where(Tenant.slug == "beta")).one()
        job = session.scalar(
            select(FinetuningRun.openai_job_id).where(FinetuningRun.tenant_id == beta.id)
        )
        operation = session.scalar(select(Operation.id).where(Operation.tenant_id == beta.id))
    values = {"beta_operation": str(operation), "beta_job": str(job), "uuid": str(uuid.uuid4())}
    with api.client("admin-all") as client:  # unscoped, beta is there: the lists prove something
        assert "beta" in client.get("/v1/tenants").text and "beta" in client.get("/v1/status").text
        assert "ftjob-beta-event" in client.get("/v1/events").text
        listed = client.get("/v1/notifications/endpoints").text
        assert "beta-hook" in listed and "global-beta-hook" in listed
    before = _state("beta")
    checked = 0
    for key in ("serve-alpha", "admin-alpha"):
        principal_role = KeyRole.SERVE if key == "serve-alpha" else KeyRole.ADMIN
        with api.client(key) as client:
            for (method, route), cases in sorted(TABLE.items()):
                needed = routes[(method, route)]
                for case in cases:
                    path, ref = _fill(case.path, values), _fill(case.ref, values)
                    what = f"{key}: {method} {path}"
                    if not keys.Principal(uuid.uuid4(), key, principal_role, None).allows(needed):
                        assert _send(client, method, path, case.json).status_code == 403, what
                    elif case.expect == STREAM:
                        assert _stream_sees_nothing_of_beta(api, key, path) == "200", what
                    elif case.expect == LISTED:
                        response = client.get(path)
                        assert response.status_code == 200, what
                        assert "beta" not in response.text and str(beta.id) not in response.text, (
                            what
                        )
                    elif case.expect == REFUSED:
                        assert _send(client, method, path, case.json).status_code == 403, what
                    elif case.expect == AS_FRESH:
                        taken = _created(client, path, case.json, ref)
                        fresh = _created(client, path, case.json, case.missing, ref)
                        assert taken[0] == 201 and taken == fresh, what
                    else:
                        response = _send(client, method, path, case.json)
                        assert response.status_code == 404, f"{what}: {response.text}"
                        gone = _fill(case.missing, values)
                        body = (
                            json.loads(_fill(json.dumps(case.json), {}).replace(ref, gone))
                            if case.json is not None
                            else None
                        )
                        absent = _send(client, method, path.replace(ref, gone), body)
                        assert absent.status_code == 404, what
                        assert response.text.replace(ref, "X") == absent.text.replace(gone, "X"), (
                            what
                        )
                    checked += 1
    assert checked >= 2 * len(TABLE)
    after = _state("beta")
    # The stream check promoted beta itself (not through the API): only its split moved.
    assert {k: v for k, v in after.items() if k != "versions"} == {
        k: v for k, v in before.items() if k != "versions"
    }
    with api.client("admin-all") as client:
        history = client.get("/v1/tenants/beta/history").json()
    assert all(
        change["actor"] in ("test", "system") or not change["actor"].startswith("operator:")
        for change in history
    )
