"""The policy a deployment applies is the one committed when it got the tenant's lock: on
PostgreSQL the run's upsert reads it (one statement after the lock), so a change committed while
the deployment waited for the lock must be the one it sees."""

from __future__ import annotations

import threading
import time
from typing import Any

from registry.db import lock_tenant, session_factory, unit_of_work
from registry.jobs import pipeline
from registry.tenants import PolicyChanges, set_policy
from tests.factories import job_snapshot, make_tenant


def test_a_policy_changed_while_the_deploy_waits_for_the_lock_is_applied(pg_url: str) -> None:
    with unit_of_work(pg_url) as session:
        tenant = make_tenant(session, require_evaluation=False)
        slug, tenant_id = tenant.slug, tenant.id
    with unit_of_work(pg_url) as session:  # v1 serves, so that a canary keeps its percent
        pipeline.complete_job(session, job_snapshot(tenant=slug), slug)

    holder = session_factory(pg_url)()
    holder.begin()
    lock_tenant(holder, tenant_id)
    set_policy(holder, tenant_id, PolicyChanges(strategy="canary", canary_percent=20))
    found: dict[str, Any] = {}

    def deploy() -> None:
        with unit_of_work(pg_url) as session:
            found["outcome"] = pipeline.complete_job(session, job_snapshot(tenant=slug), slug)

    waiting = threading.Thread(target=deploy)
    waiting.start()
    time.sleep(0.5)
    assert waiting.is_alive(), "the deployment did not wait for the tenant's lock"
    holder.commit()
    holder.close()
    waiting.join(20)
    deployment = found["outcome"].deployment
    assert (deployment.version, deployment.traffic_percent) == (2, 20)
