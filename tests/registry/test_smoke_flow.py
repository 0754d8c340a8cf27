"""The registry's main path on both databases: deploy by each strategy, promote, roll back."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from registry import versions
from registry.errors import NothingToRollBack
from registry.models import DeploymentStatus
from tests.factories import deploy_new, make_tenant


def test_canary_then_promote_then_rollback(session: Session) -> None:
    tenant = make_tenant(session, strategy="canary", canary_percent=20)
    first = deploy_new(session, tenant)
    assert (first.version, first.traffic_percent, first.status) == (1, 100, "promoted")
    second = deploy_new(session, tenant)
    assert (second.version, second.traffic_percent, second.status) == (2, 20, "active")
    assert versions.current_split(session, tenant.id) == {1: 80, 2: 20}

    change = versions.promote(session, tenant.slug, 2, 100)
    assert change.after == {2: 100}
    back = versions.rollback(session, tenant.slug)
    assert back.after == {1: 100}
    rows = {v.version: v for v in versions.list_versions(session, tenant.slug)}
    assert rows[2].status == "deprecated" and rows[2].rolled_back_at is not None
    assert rows[1].status == "production"


def test_blue_green_stages_at_zero(session: Session) -> None:
    tenant = make_tenant(session, strategy="blue_green")
    result = deploy_new(session, tenant)
    assert result.status == DeploymentStatus.STAGED and result.traffic_percent == 0
    assert versions.current_split(session, tenant.id) == {}
    assert versions.promote(session, tenant.slug, 1).after == {1: 100}


def test_rollback_of_a_given_version_takes_only_it_out(session: Session) -> None:
    tenant = make_tenant(session, strategy="canary", canary_percent=20)
    for _ in range(3):
        deploy_new(session, tenant)
    assert versions.current_split(session, tenant.id) == {1: 64, 2: 16, 3: 20}

    change = versions.rollback(session, tenant.slug, version=2)
    assert (change.version, change.after) == (2, {1: 76, 3: 24})  # 64:20 rescaled to 100

    with pytest.raises(NothingToRollBack, match="v2 is not in production"):
        versions.rollback(session, tenant.slug, version=2)
    assert versions.current_split(session, tenant.id) == {1: 76, 3: 24}
