"""What differs between the two databases ftdeploy runs on, written once."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert(session: Session, table: Any) -> postgresql.Insert | sqlite.Insert:
    """An INSERT for the session's database that takes `on_conflict_do_nothing` /
    `on_conflict_do_update` (PostgreSQL's and SQLite's upserts share that interface)."""
    return insert_for(session.get_bind().dialect.name, table)


def insert_for(dialect_name: str, table: Any) -> postgresql.Insert | sqlite.Insert:
    """`insert` for a database named by its dialect (for statements built once per database)."""
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
