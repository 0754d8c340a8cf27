"""The schema check every door runs at start: at the migrations' head, or a clear refusal."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from alembic import command

from migrations import alembic_config, upgrade
from registry.errors import FtdeployError, SchemaNotCurrent
from registry.schema import head_revisions, require_current_schema
from tests import services


@pytest.fixture
def empty_pg(postgres: services.Service) -> Iterator[str]:
    name = f"ftdeploy_schema{os.getpid()}"
    services.drop_database(postgres.url, name)
    yield services.create_database(postgres.url, name)
    services.drop_database(postgres.url, name)


def test_schema_check_refuses_a_database_not_at_head(empty_pg: str) -> None:
    with pytest.raises(SchemaNotCurrent) as caught:
        require_current_schema(empty_pg)
    assert isinstance(caught.value, FtdeployError)
    assert "no ftdeploy schema" in str(caught.value)
    assert "run `ftdeploy db upgrade`" in str(caught.value)

    upgrade(empty_pg, "0001")  # behind the head
    with pytest.raises(SchemaNotCurrent, match=r"database: 0001.*ftdeploy db upgrade"):
        require_current_schema(empty_pg)

    upgrade(empty_pg)
    assert require_current_schema(empty_pg) == head_revisions()

    # Migrated by a newer ftdeploy: a revision these scripts do not know.
    command.stamp(alembic_config(empty_pg), "head", purge=True)
    from sqlalchemy import create_engine, text

    engine = create_engine(empty_pg)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    engine.dispose()
    with pytest.raises(SchemaNotCurrent, match="newer ftdeploy") as newer:
        require_current_schema(empty_pg)
    assert newer.value.newer
