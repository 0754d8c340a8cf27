"""The closing checks can fail: each breakage of an invariant, made by hand, is reported."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from registry.db import unit_of_work
from registry.jobs import events
from registry.models import EventState
from tests.factories import deploy_new, make_tenant
from tests.faults.checks import check_all, make_bystander

pytestmark = pytest.mark.faults

BREAKAGES = {
    "traffic does not sum to 100": (
        "UPDATE ai_model_versions SET traffic_percent = traffic_percent - 1 "
        "WHERE status = 'production' AND traffic_percent > 1 AND tenant_id = :t",
        "sums to",
    ),
    "a gap in the versions": (
        "UPDATE ai_model_versions SET version = 7 WHERE version = 2 AND tenant_id = :t",
        "gaps or duplicates",
    ),
    "a change missing from the audit trail": (
        "DELETE FROM ai_traffic_events WHERE tenant_id = :t AND action = 'deploy' AND version = 1",
        "starts from",
    ),
    "a version deployed twice": (
        "INSERT INTO ai_traffic_events "
        "(tenant_id, action, version, actor, reason, split_before, split_after, created_at) "
        "SELECT tenant_id, action, version, actor, reason, split_after, split_after, created_at "
        "FROM ai_traffic_events WHERE tenant_id = :t AND action = 'deploy' AND version = 1",
        "deployed 2 times",
    ),
    "an event left open": (
        "UPDATE ai_job_events SET state = 'received', in_flight_since = now() "
        "WHERE openai_job_id IN (SELECT openai_job_id FROM ai_finetuning_runs "
        "WHERE tenant_id = :t)",
        "still received",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_each_broken_invariant_is_reported(pg_url: str, breakage: str) -> None:
    bystander = make_bystander(pg_url)
    with unit_of_work(pg_url) as session:
        tenant = make_tenant(session, "victim", require_evaluation=False, strategy="canary")
        results = [deploy_new(session, tenant, recommendation=None) for _ in range(2)]
        for result in results:
            run = session.execute(
                text("SELECT openai_job_id FROM ai_finetuning_runs r JOIN ai_model_versions v "
                     "ON v.run_id = r.id WHERE v.tenant_id = :t AND v.version = :n"),
                {"t": tenant.id, "n": result.version},
            ).scalar_one()  # fmt: skip
            events.accept_event(session, run, "victim", "cli")
            events.finish_event(session, run, EventState.DONE, "handled")
        victim = tenant.id
    check_all(pg_url, bystander=bystander)  # sound before the breakage

    statement, message = BREAKAGES[breakage]
    with unit_of_work(pg_url) as session:
        session.execute(text(statement), {"t": victim})
    with pytest.raises(AssertionError, match=message):
        check_all(pg_url, bystander=bystander)


def test_a_change_to_the_bystander_is_reported(pg_url: str) -> None:
    bystander = make_bystander(pg_url)
    with unit_of_work(pg_url) as session:
        session.execute(
            text("UPDATE ai_deployment_policies SET min_samples = 7 WHERE tenant_id = :t"),
            {"t": bystander.tenant_id},
        )
    with pytest.raises(AssertionError, match="bystander"):
        check_all(pg_url, bystander=bystander)
