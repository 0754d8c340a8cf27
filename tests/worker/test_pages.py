"""The dashboard's pages without a browser (starlette's TestClient on the real app and a real
database): sign-in and its cookie, what each role sees, 404 for another tenant exactly as for
none, CSRF, the security headers, and actions queued as the API queues them."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.exc import InternalError
from starlette.testclient import TestClient

from registry import keys
from registry.db import unit_of_work
from registry.models import AuditEvent, Operation, Tenant
from registry.settings import get_settings
from registry.tenants import get_policy
from tests.factories import deploy_new, make_tenant
from worker.http.app import create_app
from worker.http.pages.render import SECURITY_HEADERS
from worker.http.pages.routes import reading
from worker.http.pages.sessions import COOKIE

KEYS: dict[str, str] = {}


@pytest.fixture
def app(cli_db: str) -> Iterator[TestClient]:
    with unit_of_work() as session:
        for slug in ("alpha", "beta"):
            tenant = make_tenant(session, slug, strategy="canary", require_evaluation=False)
            deploy_new(session, tenant, recommendation=None)
            deploy_new(session, tenant, recommendation=None)
        for name, role, scope in (
            ("reader", "read", []),
            ("ops-alpha", "operate", ["alpha"]),
            ("server", "serve", []),
        ):
            KEYS[name] = keys.create_key(session, name, role, scope)[1]
    with TestClient(create_app(), base_url="http://testserver") as client:
        yield client


def sign_in(client: TestClient, name: str) -> str:
    """Sign in as `name`; the page's CSRF token."""
    form = client.get("/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    done = client.post(
        "/sign-in",
        data={"csrf": token.group(1), "key": KEYS[name], "next": "/"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    cookie = done.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    assert KEYS[name] not in cookie and KEYS[name].split("_")[2] not in cookie
    page = client.get("/")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def test_signed_out_goes_to_sign_in_and_a_bad_key_is_refused(app: TestClient) -> None:
    response = app.get("/tenants/alpha", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/sign-in?next=/tenants/alpha"
    form = app.get("/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    wrong = app.post("/sign-in", data={"csrf": token.group(1), "key": "ftd_nope"})
    assert wrong.status_code == 401 and "Not signed in" in wrong.text
    forged = app.post("/sign-in", data={"csrf": "forged", "key": KEYS["reader"]})
    assert forged.status_code == 403 and COOKIE not in forged.headers.get("set-cookie", "")
    server = app.post("/sign-in", data={"csrf": _token(app), "key": KEYS["server"]})
    assert server.status_code == 403 and "serve key cannot read" in server.text


def _token(app: TestClient) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', app.get("/sign-in").text)
    assert found is not None
    return found.group(1)


def test_a_read_key_sees_every_tenant_and_no_action(app: TestClient) -> None:
    csrf = sign_in(app, "reader")
    fleet = app.get("/")
    for name, value in SECURITY_HEADERS.items():
        assert fleet.headers[name] == value
    assert "alpha" in fleet.text and "beta" in fleet.text
    assert "v1 90% · v2 10%" in fleet.text
    page = app.get("/tenants/alpha")
    assert page.status_code == 200
    assert (
        "Queue promotion" not in page.text
        and '<form method="post" action="/tenants' not in page.text
    )
    assert "Your key reads only" in page.text
    assert "<script>" not in page.text and "style=" not in page.text
    forged = app.post(
        "/tenants/alpha/rollback", data={"csrf": csrf, "reason": "forged"}, follow_redirects=False
    )
    assert forged.status_code == 403 and "operate key" in forged.text
    assert _operations() == 0


def test_a_scoped_operator_sees_only_its_tenant_and_acts_on_it(app: TestClient) -> None:
    csrf = sign_in(app, "ops-alpha")
    fleet = app.get("/")
    assert "alpha" in fleet.text and "beta" not in fleet.text
    hidden, absent = app.get("/tenants/beta"), app.get("/tenants/nobody")
    assert hidden.status_code == absent.status_code == 404
    assert hidden.text.replace("beta", "X") == absent.text.replace("nobody", "X")
    assert app.get("/tenants/beta/fragments/live").status_code == 404
    refused = app.post("/tenants/beta/rollback", data={"csrf": csrf, "reason": "no"})
    assert refused.status_code == 404
    page = app.get("/tenants/alpha")
    assert "Queue promotion" in page.text
    preview = app.get("/tenants/alpha/preview?action=promote&version=2&percent=50")
    assert "v1 50% · v2 50%" in preview.text and "v1 90% · v2 10%" in preview.text
    no_token = app.post(
        "/tenants/alpha/promote", data={"version": "2", "percent": "50", "reason": "ok"}
    )
    assert no_token.status_code == 403 and "CSRF" in no_token.text
    no_reason = app.post(
        "/tenants/alpha/promote", data={"csrf": csrf, "version": "2", "percent": "50"}
    )
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    assert _operations() == 0
    queued = app.post(
        "/tenants/alpha/promote",
        data={"csrf": csrf, "version": "2", "percent": "50", "reason": "looks good"},
        follow_redirects=False,
    )
    assert queued.status_code == 303, queued.text
    assert queued.headers["location"].startswith("/tenants/alpha?op=")
    with unit_of_work() as session:
        operation = session.scalars(select(Operation)).one()
        assert (operation.actor, operation.reason) == ("ops-alpha", "looks good")
        assert (operation.version, operation.traffic_percent) == (2, 50)
    shown = app.get(queued.headers["location"])
    assert "Promote v2 to 50%" in shown.text and "queued" in shown.text


def test_sign_out_ends_the_session(app: TestClient) -> None:
    csrf = sign_in(app, "reader")
    out = app.post("/sign-out", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    app.cookies.clear()
    assert app.get("/", follow_redirects=False).status_code == 303


def test_a_revoked_key_ends_its_sessions(app: TestClient) -> None:
    sign_in(app, "reader")
    with unit_of_work() as session:
        keys.revoke_key(session, "reader")
    app.app.state.keys._rows.clear()  # type: ignore[attr-defined]  # the cache's ttl, elapsed
    assert app.get("/", follow_redirects=False).status_code == 303


def test_a_header_key_reads_pages_without_a_session(app: TestClient) -> None:
    headers = {"Authorization": f"Bearer {KEYS['ops-alpha']}"}
    assert app.get("/tenants/alpha", headers=headers).status_code == 200
    assert app.get("/tenants/beta", headers=headers).status_code == 404
    with unit_of_work() as session:
        assert session.scalars(select(Tenant).where(Tenant.slug == "beta")).one()


def test_the_live_part_carries_the_promote_forms_versions(app: TestClient) -> None:
    """The summary an operator's page re-reads holds the promote form's options, read with the
    split it shows (the script puts them into the form); a read key's has none."""
    options = 'data-options-for="promote-version"'
    operator = {"Authorization": f"Bearer {KEYS['ops-alpha']}"}
    live = app.get("/tenants/alpha/fragments/live?part=summary", headers=operator)
    assert live.status_code == 200 and options in live.text
    template = live.text[live.text.index(options) :]
    assert '<option value="2">v2 (production, 10%)</option>' in template
    assert '<option value="1">v1 (production, 90%)</option>' in template
    reader = {"Authorization": f"Bearer {KEYS['reader']}"}
    read = app.get("/tenants/alpha/fragments/live?part=summary", headers=reader)
    assert read.status_code == 200 and options not in read.text
    chosen = app.get("/tenants/alpha?action=promote&version=1&percent=50", headers=operator)
    assert '<option value="1" selected>v1 (production, 90%)</option>' in chosen.text


def _operations() -> int:
    with unit_of_work() as session:
        return len(session.scalars(select(Operation)).all())


def _hold(slug: str) -> tuple[bool, str | None, list[tuple[str, str, str | None]]]:
    """The tenant's pause (paused, reason) and its audited pauses and resumes."""
    with unit_of_work() as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == slug)).one()
        policy = get_policy(session, tenant.id)
        audited = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant.id, AuditEvent.action.in_(["pause", "resume"]))
            .order_by(AuditEvent.id)
        )
        return (
            bool(policy.paused),
            policy.paused_reason,
            [(a.action, a.actor, a.reason) for a in audited],
        )


def test_a_read_key_cannot_pause_or_resume(app: TestClient) -> None:
    csrf = sign_in(app, "reader")
    assert "Pause auto-promotion" not in app.get("/tenants/alpha").text
    for action in ("pause", "resume"):
        forged = app.post(
            f"/tenants/alpha/{action}",
            data={"csrf": csrf, "reason": "forged"},
            follow_redirects=False,
        )
        assert forged.status_code == 403 and "operate key" in forged.text
    header = app.post(
        "/tenants/alpha/pause",
        data={"reason": "forged"},
        headers={"Authorization": f"Bearer {KEYS['reader']}"},
    )
    assert header.status_code == 403
    assert _hold("alpha") == (False, None, [])


def test_an_operator_pauses_and_resumes_its_tenant_with_a_reason(app: TestClient) -> None:
    csrf = sign_in(app, "ops-alpha")
    page = app.get("/tenants/alpha")
    assert 'action="/tenants/alpha/pause"' in page.text
    assert "Auto-promotion is paused" not in page.text
    hidden = app.post("/tenants/beta/pause", data={"csrf": csrf, "reason": "no"})
    assert hidden.status_code == 404
    no_token = app.post("/tenants/alpha/pause", data={"reason": "incident 42"})
    assert no_token.status_code == 403 and "CSRF" in no_token.text
    no_reason = app.post("/tenants/alpha/pause", data={"csrf": csrf, "reason": " "})
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    assert _hold("alpha") == (False, None, []) and _hold("beta") == (False, None, [])

    paused = app.post(
        "/tenants/alpha/pause",
        data={"csrf": csrf, "reason": "incident 42"},
        follow_redirects=False,
    )
    assert paused.status_code == 303 and paused.headers["location"] == "/tenants/alpha#live"
    assert _hold("alpha") == (True, "incident 42", [("pause", "ops-alpha", "incident 42")])
    shown = app.get("/tenants/alpha").text
    assert "Auto-promotion is paused" in shown and 'action="/tenants/alpha/resume"' in shown
    assert "auto-promotion is paused" in app.get("/?attention=1").text

    resumed = app.post(
        "/tenants/alpha/resume",
        data={"csrf": csrf, "reason": "incident over"},
        follow_redirects=False,
    )
    assert resumed.status_code == 303
    assert _hold("alpha") == (
        False,
        None,
        [("pause", "ops-alpha", "incident 42"), ("resume", "ops-alpha", "incident over")],
    )
    assert "Auto-promotion is paused" not in app.get("/tenants/alpha").text


def test_a_reading_session_cannot_write_on_postgresql(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pages that only read end with a commit (it keeps psycopg's prepared statements): their
    # transaction is READ ONLY, so a write by mistake fails instead of being kept.
    monkeypatch.setenv("FTDEPLOY_DATABASE_URL", pg_url)
    get_settings.cache_clear()
    with pytest.raises(InternalError, match="read-only transaction"), reading() as session:
        make_tenant(session, "written-by-a-page")
        session.flush()
    with unit_of_work() as session:
        assert session.scalar(select(Tenant).where(Tenant.slug == "written-by-a-page")) is None
        make_tenant(session, "written-by-a-unit-of-work")  # the pooled connection writes again
    get_settings.cache_clear()
