"""Bad input to the registry: a specific error, and the database exactly as it was.

Each call runs in a session that is *committed* after the expected error is caught, so whatever
the call wrote before refusing would be kept and seen by the dump: this shows the registry refuses
before it writes, not only that the caller's rollback hides it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session

from registry import audit, deployments, operations, tenants, versions
from registry.db import session_factory
from registry.errors import (
    FtdeployError,
    InvalidInput,
    NothingToRollBack,
    RunNotDeployable,
    RunNotFound,
    TenantExists,
    TenantMismatch,
    TenantNotFound,
    VersionNotFound,
)
from registry.jobs import runs
from registry.tenants import PolicyChanges
from tests.dbdump import diff, dump
from tests.registry.world import World, module_world

Call = Callable[[Session, World], Any]


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    yield from module_world(request, tmp_path_factory)


def _promote(version: object, percent: object = 50, tenant: str = "alpha") -> Call:
    return lambda s, w: versions.promote(s, tenant, version, percent)  # type: ignore[arg-type]


def _policy(**changes: Any) -> Call:
    return lambda s, w: tenants.set_policy(s, w.alpha_id, PolicyChanges(**changes))


CASES: list[tuple[str, Call, type[FtdeployError]]] = [
    # unknown tenant
    ("promote-unknown-tenant", _promote(1, tenant="nobody"), TenantNotFound),
    ("rollback-unknown-tenant", lambda s, w: versions.rollback(s, "nobody"), TenantNotFound),
    ("versions-unknown-tenant", lambda s, w: versions.list_versions(s, "nobody"), TenantNotFound),
    ("history-unknown-tenant", lambda s, w: audit.history(s, "nobody"), TenantNotFound),
    *[
        (f"history-limit-{n!r}", lambda s, w, n=n: audit.history(s, "alpha", n), InvalidInput)
        for n in (-1, 0, True, 2.5)
    ],
    (
        "promote-unknown-tenant-id",
        lambda s, w: versions.promote(s, uuid.uuid4(), 1),
        TenantNotFound,
    ),
    ("find-unknown-id", lambda s, w: tenants.find_tenant(s, str(uuid.uuid4())), TenantNotFound),
    # unknown version, a version of another tenant
    ("promote-unknown-version", _promote(99), VersionNotFound),
    ("promote-unknown-version-v", _promote("v99"), VersionNotFound),
    ("promote-other-tenants-version", _promote(3, tenant="beta"), VersionNotFound),
    (
        "promote-other-tenants-version-id",
        lambda s, w: versions.promote(s, "beta", str(w.alpha_v3_id), 50),  # type: ignore[arg-type]
        InvalidInput,
    ),
    # percent outside 1..100 or not an integer
    *[
        (f"promote-percent-{value!r}", _promote(2, value), InvalidInput)
        for value in (101, 0, -1, 12.5, True, "50", None)
    ],
    # version numbers that are not version numbers
    *[
        (f"promote-version-{value!r}", _promote(value), InvalidInput)
        for value in ("abc", 0, -1, True, 2.5, "v", "")
    ],
    # policy: unknown strategy and values out of range
    ("policy-unknown-strategy", _policy(strategy="rolling"), InvalidInput),
    *[
        (f"policy-canary-percent-{value!r}", _policy(canary_percent=value), InvalidInput)
        for value in (0, 100, -1, 12.5, True, "50")
    ],
    ("policy-threshold-1.5", _policy(auto_promote=True, auto_promote_threshold=1.5), InvalidInput),
    ("policy-min-samples-0", _policy(min_samples=0), InvalidInput),
    ("policy-steps-decreasing", _policy(canary_steps=(50, 25)), InvalidInput),
    ("policy-unknown-metric", _policy(metric="latency"), InvalidInput),
    ("policy-percent-disagrees-with-steps", _policy(canary_percent=30), InvalidInput),
    (
        "policy-percent-disagrees-with-new-steps",
        _policy(canary_percent=20, canary_steps=(30, 60)),
        InvalidInput,
    ),
    ("policy-bake-outlasts-deadline", _policy(bake_seconds=100_000), InvalidInput),
    # a valid field does not slip in with an invalid one
    ("policy-half-valid", _policy(strategy="immediate", canary_percent=0), InvalidInput),
    # rollback with nothing to return to
    ("rollback-only-version", lambda s, w: versions.rollback(s, "beta"), NothingToRollBack),
    ("rollback-no-versions", lambda s, w: versions.rollback(s, "empty"), NothingToRollBack),
    # evaluations
    (
        "evaluation-unknown-job",
        lambda s, w: runs.record_evaluation(s, "ftjob-missing", "approve", {"accuracy": 0.9}),
        RunNotFound,
    ),
    (
        "evaluation-bad-recommendation",
        lambda s, w: runs.record_evaluation(s, w.alpha_job, "maybe"),
        InvalidInput,
    ),
    # bad slugs
    *[
        (
            f"create-slug-{slug!r}",
            lambda s, w, slug=slug: tenants.create_tenant(s, slug),
            InvalidInput,
        )
        for slug in ("Bad Slug", "", "-alpha", "UPPER", "a" * 64, "émile")
    ],
    ("create-existing", lambda s, w: tenants.create_tenant(s, "alpha"), TenantExists),
    ("find-bad-slug", lambda s, w: tenants.find_tenant(s, "Not A Slug"), InvalidInput),
    # bad metrics "k=v"
    *[
        (f"metric-{pair!r}", lambda s, w, pair=pair: runs.parse_metrics([pair]), InvalidInput)
        for pair in ("accuracy", "accuracy=high", "=1", "acc=nan", "acc=inf", "bad name=1")
    ],
    # deploy: a run of another tenant, a run that did not succeed
    (
        "deploy-other-tenants-run",
        lambda s, w: deployments.deploy(s, "beta", w.alpha_run_id),
        TenantMismatch,
    ),
    (
        "deploy-failed-run",
        lambda s, w: deployments.deploy(s, "alpha", w.failed_run_id),
        RunNotDeployable,
    ),
    # operator operations are checked before anything is queued
    (
        "queue-promote-unknown-version",
        lambda s, w: operations.queue_operation(s, "alpha", "promote", version=99),
        VersionNotFound,
    ),
    (
        "queue-promote-bad-percent",
        lambda s, w: operations.queue_operation(
            s, "alpha", "promote", version=2, traffic_percent=0
        ),
        InvalidInput,
    ),
    (
        "queue-unknown-kind",
        lambda s, w: operations.queue_operation(s, "alpha", "restart"),
        InvalidInput,
    ),
]


@pytest.mark.parametrize(("call", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(
    world: World, call: Call, error: type[FtdeployError]
) -> None:
    before = dump(world.url)
    with session_factory(world.url)() as session:
        with pytest.raises(error) as raised:
            call(session, world)
        session.commit()
    assert type(raised.value) is error
    assert str(raised.value)  # a message for people, built by the error class
    assert diff(before, dump(world.url)) == {}


def test_the_world_is_what_the_cases_assume(world: World) -> None:
    """Guards the cases above against passing for the wrong reason (say, alpha had no v2)."""
    with session_factory(world.url)() as session:
        alpha = {
            v.version: (v.status, v.traffic_percent)
            for v in versions.list_versions(session, "alpha")
        }
        assert alpha == {1: ("production", 80), 2: ("production", 20), 3: ("staging", 0)}
        beta = [(v.version, v.status) for v in versions.list_versions(session, "beta")]
        assert beta == [(1, "production")]
        assert versions.list_versions(session, "empty") == []
        policy = tenants.get_policy(session, world.alpha_id)
        assert (policy.canary_percent, policy.canary_steps) == (20, [20, 50, 100])
        assert policy.progress_deadline_seconds < 100_000
        # the good versions of the refused calls work
        assert versions.promote(session, "alpha", 2, 50).after == {1: 50, 2: 50}
        session.rollback()
