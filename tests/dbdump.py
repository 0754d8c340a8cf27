"""A full dump of a database's rows, to show that a refused request changed nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text

from registry.db import session_factory
from registry.models import Base

Dump = dict[str, list[tuple[Any, ...]]]


def dump(url: str) -> Dump:
    """Every row of every table of the schema (and Alembic's version), in primary-key order.

    Read in a transaction of its own, so it sees what is committed and nothing else.
    """
    result: Dump = {}
    with session_factory(url)() as session:
        for table in Base.metadata.sorted_tables:
            query = select(table).order_by(*table.primary_key.columns)
            result[table.name] = [tuple(row) for row in session.execute(query)]
        result["alembic_version"] = [
            tuple(row) for row in session.execute(text("SELECT version_num FROM alembic_version"))
        ]
    return result


def diff(before: Dump, after: Dump) -> dict[str, tuple[int, int]]:
    """Tables whose rows differ, with their row counts before and after (for failure messages)."""
    return {
        name: (len(before.get(name, [])), len(after.get(name, [])))
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }
