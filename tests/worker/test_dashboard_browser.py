"""The dashboard in a real browser: headless Chromium (Playwright, Debian's own binary) against
`ftdeploy serve`, a Celery worker with beat (a sweep every second), PostgreSQL and Redis.

Signs in with keys of each role; checks that the fleet lists exactly the key's tenants, that the
tenant page follows a canary through its steps without a reload, that an operator's promotion
lands with the key's name as the actor (the form's list and its open preview then follow later
changes), that a `read` key has no buttons and its forged POST is refused, that another tenant's
page is a 404, that a form without its CSRF token is refused, and that an operator pauses and
resumes auto-promotion with a reason.
Takes the README's screenshots (docs/screenshots/) on the way.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from registry import versions
from registry.canary.outcome_input import Outcome
from registry.canary.outcomes import store_outcomes
from registry.db import unit_of_work
from registry.jobs import events
from registry.models import AuditEvent
from registry.tenants import PolicyChanges, find_tenant, get_policy, set_policy
from tests.factories import deploy_new, make_run, make_tenant
from tests.harness import REPO
from tests.worker.api_stack import ApiServer, ApiStack
from tests.worker.e2e_stack import e2e_stack

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = REPO / "docs" / "screenshots"
LAPTOP = {"width": 1280, "height": 900}
CANARY: dict[str, Any] = dict(
    strategy="canary",
    canary_steps=(10, 25, 50, 100),
    auto_promote=True,
    auto_promote_threshold=0.9,
    min_samples=20,
    bake_seconds=1,
    progress_deadline_seconds=3600,
    require_evaluation=False,
)

if CHROMIUM is None:
    pytest.skip(
        "chromium is not installed (apt-get install chromium; .ci/run installs it)",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


def _tenant(slug: str, versions: int, **policy: Any) -> None:
    with unit_of_work() as session:
        tenant = make_tenant(session, slug, **({"require_evaluation": False} | policy))
        for _ in range(versions):
            deploy_new(session, tenant, recommendation=None)


def _fleet() -> None:
    """A small fleet with something of everything the fleet page shows."""
    _tenant("acme", 2, **(CANARY | {"min_samples": 500, "bake_seconds": 600}))
    _tenant("initech", 3)
    with unit_of_work() as session:
        globex = make_tenant(session, "globex", require_evaluation=False)
        deploy_new(session, globex, recommendation=None)
        set_policy(session, globex.id, PolicyChanges(strategy="blue_green"))
        deploy_new(session, globex, recommendation=None)
        umbrella = make_tenant(session, "umbrella")
        deploy_new(session, umbrella, recommendation="approve")
        deploy_new(session, umbrella, recommendation=None)  # awaiting its evaluation
        make_run(session, umbrella)
        events.accept_event(session, "ftjob-umbrella-broken", "umbrella", "api")
    with unit_of_work() as session:
        events.finish_event(
            session, "ftjob-umbrella-broken", "failed", "OpenAI says the job failed: bad file"
        )
    _tenant("walker", 2, **CANARY)
    _tenant("promo", 2)
    time.sleep(1.1)  # past the bucket in which acme's step began: these count
    with unit_of_work() as session:
        store_outcomes(
            session,
            [
                Outcome("acme", 2, True, count=139),
                Outcome("acme", 2, False, count=2),
                Outcome("acme", 1, True, count=1262),
                Outcome("acme", 1, False, count=9),
            ],
            bucket_seconds=1,
        )


@pytest.fixture(scope="module")
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiStack]:
    tmp = tmp_path_factory.mktemp("dashboard")
    with e2e_stack(
        request,
        tmp,
        outcome_bucket_seconds=1,
        stream_heartbeat_seconds=2,
        api_key_cache_seconds=0.2,
    ) as stack:
        stack.start_worker("w1", beat=True)
        server = ApiServer(stack.env, tmp / "api.log").start()
        try:
            api = ApiStack(stack, server)
            _fleet()
            api.key("reader", "read")
            api.key("ops-promo", "operate", "promo", "walker")
            api.key("read-two", "read", "acme", "globex")
            yield api
        finally:
            server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, api: ApiStack) -> Iterator[Page]:
    context = browser.new_context(
        base_url=api.url, viewport=LAPTOP, timezone_id="Europe/Paris", locale="en-GB"
    )
    context.set_default_timeout(15_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield opened
    context.close()
    # A CSP violation or a script error shows in the console.
    assert not [e for e in errors if "401" not in e and "403" not in e and "404" not in e], errors


def sign_in(page: Page, api: ApiStack, name: str, target: str = "/") -> None:
    page.goto(target)
    expect(page).to_have_url(f"{api.url}/sign-in?next={target}")
    page.get_by_label("API key").fill(api.keys[name])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(f"Signed in as {name}")).to_be_visible()


def _shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def test_the_fleet_lists_exactly_the_keys_tenants(page: Page, api: ApiStack) -> None:
    sign_in(page, api, "read-two")
    names = page.locator("table.fleet tbody th a").all_inner_texts()
    assert names == ["acme", "globex"]
    assert "initech" not in page.content()
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{api.url}/sign-in")


def test_fleet_page_and_its_attention_filter(page: Page, api: ApiStack) -> None:
    sign_in(page, api, "reader")
    names = page.locator("table.fleet tbody th a").all_inner_texts()
    assert names == ["acme", "globex", "initech", "promo", "umbrella", "walker"]
    acme = page.locator("tr", has=page.get_by_role("link", name="acme"))
    expect(acme).to_contain_text("v1 90% · v2 10%")
    expect(acme).to_contain_text("holding for data")
    expect(page.locator("tr", has_text="globex")).to_contain_text("v2 is staged")
    expect(page.locator("tr", has_text="umbrella")).to_contain_text("failed job event")
    expect(page.locator("time").first).not_to_contain_text("UTC")  # the viewer's zone
    _shot(page, "fleet.png")
    page.get_by_role("link", name="acme").click()
    expect(page.locator("#canary")).to_contain_text("141 requests, 139 successes")
    expect(page.locator("#canary")).to_contain_text("not significantly worse")
    _shot(page, "tenant-canary.png")
    page.goto("/")
    page.get_by_role("link", name="Needs attention").click()
    attention = page.locator("table.fleet tbody th a").all_inner_texts()
    assert "initech" not in attention and {"acme", "globex", "umbrella"} <= set(attention)
    page.set_viewport_size({"width": 390, "height": 844})
    _shot(page, "fleet-phone.png")


def _feed(tenant: str, stop: threading.Event) -> None:
    """Successful outcomes for both versions, as a serving app would report them."""
    while not stop.is_set():
        batch = [Outcome(tenant, v, True, count=15) for v in (1, 2)]
        with unit_of_work() as session:
            store_outcomes(session, batch, bucket_seconds=1)
        stop.wait(0.3)


def test_the_tenant_page_follows_a_canary_without_reloading(page: Page, api: ApiStack) -> None:
    sign_in(page, api, "reader", "/tenants/walker")
    canary = page.locator("#canary")
    expect(canary).to_contain_text("Canary v2 at 10%: step 1 of 4")
    expect(canary).to_contain_text("Next sweep: hold")
    page.evaluate("window.__still_here = true")
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=("walker", stop), daemon=True)
    feeder.start()
    try:
        expect(canary).to_contain_text("Canary v2 at 25%: step 2 of 4", timeout=30_000)
        expect(page.locator("#live")).to_contain_text("v1 75% · v2 25%")
        expect(canary).to_contain_text("step 3 of 4", timeout=30_000)
        expect(page.locator("#live")).to_contain_text("v2 100%", timeout=30_000)
    finally:
        stop.set()
        feeder.join(5)
    expect(page.locator("#canary")).to_have_count(0)
    audit = page.locator("table.audit")
    expect(audit).to_contain_text("auto_promote")
    assert page.evaluate("window.__still_here") is True  # no navigation happened


def test_an_operator_promotes_with_a_reason(page: Page, api: ApiStack) -> None:
    sign_in(page, api, "ops-promo", "/tenants/promo")
    form = page.locator("form[data-action=promote]")
    form.get_by_label("Version").select_option("1")
    form.get_by_label("Traffic percent").fill("30")
    expect(form.locator(".preview")).to_contain_text("v1 30% · v2 70%")
    form.get_by_label("Reason").fill("v1 answers billing questions better")
    started = time.monotonic()
    form.get_by_role("button", name="Queue promotion").click()
    panel = page.locator("#operation")
    expect(panel).to_contain_text("succeeded", timeout=20_000)
    assert time.monotonic() - started < 20
    row = page.locator("table.audit tbody tr").first
    expect(row).to_contain_text("v2 100% → v1 30% · v2 70%", timeout=5_000)
    expect(row.locator(".actor")).to_have_text("operator:ops-promo")  # the key's name
    expect(row).to_contain_text("v1 answers billing questions better")
    # The form's list follows the live update too (it said 100% and 0% until reloaded).
    form = page.locator("form[data-action=promote]")
    version = form.get_by_label("Version")
    expect(version.locator("option[value='2']")).to_have_text("v2 (production, 70%)")
    expect(version.locator("option[value='1']")).to_have_text("v1 (production, 30%)")
    _shot(page, "tenant-operator.png")
    # A change while the operator is filling in the form: the list is refreshed, their choice
    # and their reason are kept.
    version.select_option("1")
    form.get_by_label("Reason").fill("half and half, for now")
    with unit_of_work() as session:
        versions.promote(session, "promo", 1, 50, actor="operator:test", reason="elsewhere")
    expect(page.locator("#live")).to_contain_text("v1 50% · v2 50%", timeout=5_000)
    expect(version.locator("option[value='2']")).to_have_text("v2 (production, 50%)")
    expect(version).to_have_value("1")
    expect(form.get_by_label("Reason")).to_have_value("half and half, for now")
    # An open preview follows it as well: its "Now" is the live split, not the one it was
    # computed against (its "After" is waited for first, so the change comes after it).
    form.get_by_label("Traffic percent").fill("40")
    now = form.locator(".preview [data-now] .split-text")
    expect(form.locator(".preview .split-text").last).to_have_text("v1 40% · v2 60%")
    expect(now).to_have_text("v1 50% · v2 50%")
    with unit_of_work() as session:
        versions.promote(session, "promo", 1, 20, actor="operator:test", reason="elsewhere too")
    expect(page.locator("#live")).to_contain_text("v1 20% · v2 80%", timeout=5_000)
    expect(now).to_have_text("v1 20% · v2 80%", timeout=5_000)
    expect(form.locator(".preview .split-text").last).to_have_text("v1 40% · v2 60%")
    expect(form.get_by_label("Reason")).to_have_value("half and half, for now")


def test_a_read_key_finds_no_buttons_and_its_forged_post_is_refused(
    page: Page, api: ApiStack
) -> None:
    sign_in(page, api, "reader", "/tenants/promo")
    expect(page.locator("#read-only")).to_be_visible()
    assert page.locator("main form").count() == 0
    assert page.get_by_role("button", name="Queue promotion").count() == 0
    csrf = page.locator("header input[name=csrf]").get_attribute("value")
    forged = page.request.post(
        "/tenants/promo/rollback", form={"csrf": csrf or "", "reason": "forged"}
    )
    assert forged.status == 403
    assert "operate key" in forged.text()


def test_another_tenants_page_is_not_found(page: Page, api: ApiStack) -> None:
    sign_in(page, api, "ops-promo", "/tenants/promo")
    hidden = page.goto("/tenants/acme")
    assert hidden is not None and hidden.status == 404
    text = page.locator("main").inner_text()
    absent = page.goto("/tenants/no-such-tenant")
    assert absent is not None and absent.status == 404
    assert text.replace("acme", "X") == page.locator("main").inner_text().replace(
        "no-such-tenant", "X"
    )


def test_a_form_without_its_csrf_token_is_refused(page: Page, api: ApiStack) -> None:
    sign_in(page, api, "ops-promo", "/tenants/promo")
    form = page.locator("form[data-action=rollback]")
    form.get_by_label("Reason").fill("no token")
    form.locator("input[name=csrf]").evaluate("input => input.remove()")
    with page.expect_navigation() as navigation:
        form.get_by_role("button", name="Queue rollback").click()
    response = navigation.value
    assert response is not None and response.status == 403
    expect(page.locator("main")).to_contain_text("CSRF")


def test_an_operator_pauses_and_resumes_auto_promotion(page: Page, api: ApiStack) -> None:
    sign_in(page, api, "ops-promo", "/tenants/promo")
    form = page.locator("form#hold")
    form.get_by_label("Reason").fill("incident 42")
    form.get_by_role("button", name="Pause auto-promotion").click()
    banner = page.locator("#paused")
    expect(banner).to_contain_text("Auto-promotion is paused")
    expect(banner).to_contain_text("incident 42")
    page.goto("/?attention=1")
    expect(page.locator("tr", has_text="promo")).to_contain_text("auto-promotion is paused")
    page.goto("/tenants/promo")
    form.get_by_label("Reason").fill("incident over")
    form.get_by_role("button", name="Resume auto-promotion").click()
    expect(form.get_by_role("button", name="Pause auto-promotion")).to_be_visible()
    expect(page.locator("#paused")).to_have_count(0)
    with unit_of_work() as session:
        tenant = find_tenant(session, "promo")
        audited = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant.id, AuditEvent.action.in_(["pause", "resume"]))
            .order_by(AuditEvent.id)
        )
        assert [(a.action, a.actor, a.reason) for a in audited] == [
            ("pause", "ops-promo", "incident 42"),
            ("resume", "ops-promo", "incident over"),
        ]
        assert not get_policy(session, tenant.id).paused
