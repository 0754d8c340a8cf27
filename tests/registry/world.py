"""A small registry to throw bad input at, shared by a whole test module (nothing changes it).

- `alpha` (canary, steps 20, 50, 100): v1 80%, v2 20%, v3 staged; a failed run.
- `beta` (immediate): v1 100%, the only version that ever served: nothing to roll back to.
- `empty`: no versions at all.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from registry import db as registry_db
from registry.db import unit_of_work
from registry.models import FinetuningRun
from registry.tenants import PolicyChanges, set_policy
from registry.versions import find_version, list_versions
from tests import services
from tests.conftest import fresh_postgres_url
from tests.factories import deploy_new, make_run, make_tenant


@dataclass(frozen=True)
class World:
    url: str
    alpha_id: uuid.UUID
    alpha_v3_id: uuid.UUID
    alpha_job: str  # a succeeded job of alpha, already deployed as v1
    alpha_run_id: uuid.UUID
    failed_run_id: uuid.UUID


def build(url: str) -> World:
    with unit_of_work(url) as session:
        alpha = make_tenant(session, "alpha", strategy="canary", canary_percent=20)
        deploy_new(session, alpha)
        deploy_new(session, alpha)
        set_policy(session, alpha.id, PolicyChanges(strategy="blue_green"))
        deploy_new(session, alpha)
        # Progressive steps from now on: a canary percent that disagrees with them is refused.
        set_policy(session, alpha.id, PolicyChanges(strategy="canary", canary_steps=(20, 50)))
        failed = make_run(session, alpha, status="failed", fine_tuned_model=None, error="boom")
        beta = make_tenant(session, "beta", require_evaluation=False)
        deploy_new(session, beta)
        make_tenant(session, "empty")
        v1 = find_version(session, alpha, 1)
        assert [v.version for v in list_versions(session, alpha.id)] == [3, 2, 1]
        first_run = session.get_one(FinetuningRun, v1.run_id)
        return World(
            url=url,
            alpha_id=alpha.id,
            alpha_v3_id=find_version(session, alpha, 3).id,
            alpha_job=first_run.openai_job_id,
            alpha_run_id=first_run.id,
            failed_run_id=failed.id,
        )


def module_world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """Body of a module-scoped fixture parametrized over "postgresql" and "sqlite"."""
    if request.param == "postgresql":
        postgres: services.Service = request.getfixturevalue("postgres")
        url = fresh_postgres_url(postgres, request.getfixturevalue("postgres_template"))
    else:
        path = tmp_path_factory.mktemp(f"world-{os.getpid()}") / "world.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    yield build(url)
    bind = registry_db.session_factory(url).kw.get("bind")
    if bind is not None:
        bind.dispose()
    if request.param == "postgresql":
        services.drop_database(postgres.url, url.rsplit("/", 1)[1])
