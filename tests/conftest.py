"""Shared fixtures: real PostgreSQL and Redis servers for the session, a fresh migrated database
per test (PostgreSQL: a copy of a migrated template; SQLite: a copy of a migrated file)."""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from registry import db as registry_db
from tests import services

_counter = itertools.count()

# The default data directory is the user's ($XDG_DATA_HOME/ftdeploy): no test, and no process a
# test starts, may touch the real one. Set before any test module is imported, because importing
# the Celery app with the embedded broker already creates directories there.
_DATA_HOME = tempfile.mkdtemp(prefix="ftdeploy-test-xdg-")
os.environ["XDG_DATA_HOME"] = _DATA_HOME
atexit.register(shutil.rmtree, _DATA_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[services.Service]:
    service = services.start_postgres()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def redis_service() -> Iterator[services.Service]:
    service = services.start_redis()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def postgres_template(postgres: services.Service) -> str:
    """A database built by the migrations once, copied for each test."""
    name = f"ftdeploy_template_{os.getpid()}"
    services.drop_database(postgres.url, name)
    url = services.create_database(postgres.url, name)
    upgrade(url)
    _dispose(url)
    return name


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    _dispose(url)
    return path


def _dispose(url: str) -> None:
    registry_db._session_factory.cache_clear()
    for engine in list(_ENGINES.pop(url, [])):
        engine.dispose()


_ENGINES: dict[str, list[object]] = {}


def fresh_postgres_url(postgres: services.Service, template: str) -> str:
    return services.create_database(
        postgres.url, f"ftdeploy_t{os.getpid()}_{next(_counter)}", template=template
    )


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database; the test runs once on PostgreSQL and once on SQLite."""
    if request.param == "postgresql":
        postgres = request.getfixturevalue("postgres")
        url = fresh_postgres_url(postgres, request.getfixturevalue("postgres_template"))
    else:
        path = tmp_path / "ftdeploy.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    yield url
    factory = registry_db.session_factory(url)
    bind = factory.kw.get("bind")
    if bind is not None:
        bind.dispose()  # type: ignore[union-attr]
    registry_db._session_factory.cache_clear()
    if request.param == "postgresql":
        services.drop_database(request.getfixturevalue("postgres").url, url.rsplit("/", 1)[1])


@pytest.fixture
def pg_url(postgres: services.Service, postgres_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database (for tests that only make sense there)."""
    url = fresh_postgres_url(postgres, postgres_template)
    yield url
    bind = registry_db.session_factory(url).kw.get("bind")
    if bind is not None:
        bind.dispose()
    registry_db._session_factory.cache_clear()
    services.drop_database(postgres.url, url.rsplit("/", 1)[1])


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    return registry_db.session_factory(db_url)


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session in an open transaction; the test decides what to commit."""
    with sessions() as s:
        yield s
