"""Is the database's schema the one this code was written for? Checked by every door at start.

Without the check a worker against a database nobody migrated reports ready and then fails every
task with `UndefinedTable`, and the CLI says "relation tenants does not exist". With it the door
refuses to start and says what to run.

`require_current_schema(url)` compares alembic's record in the database (`alembic_version`,
read through `MigrationContext`) with the heads of the migration scripts shipped with this code.
The embedded SQLite default is upgraded by its doors before they check, as before.
"""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from registry.errors import SchemaNotCurrent

__all__ = ["SchemaNotCurrent", "current_revisions", "head_revisions", "require_current_schema"]


def _scripts() -> ScriptDirectory:
    from migrations import SCRIPT_LOCATION

    return ScriptDirectory(str(SCRIPT_LOCATION))


def head_revisions() -> tuple[str, ...]:
    """The heads of the migration scripts shipped with this code."""
    return tuple(sorted(_scripts().get_heads()))


def current_revisions(url: str) -> tuple[str, ...]:
    """The revisions the database says it is at; () for a database never migrated. Raises the
    driver's error (wrapped by SQLAlchemy) when the database cannot be reached."""
    # Its own engine, no pool: nothing of this check stays open in a process that forks later.
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return tuple(sorted(MigrationContext.configure(connection).get_current_heads()))
    finally:
        engine.dispose()


def require_current_schema(url: str | None = None) -> tuple[str, ...]:
    """Raise SchemaNotCurrent unless the database at `url` (default: the configured one) is at
    the migrations' head; returns the revisions. Read-only; safe to call at any time. Raises
    SQLAlchemy's OperationalError when the database cannot be reached (not a schema problem)."""
    if url is None:
        from registry.settings import get_settings

        url = get_settings().database_url_value
    heads = head_revisions()
    current = current_revisions(url)
    if current == heads:
        return current
    scripts = _scripts()
    newer = False
    for revision in current:
        try:
            known = scripts.get_revision(revision) is not None
        except CommandError:  # alembic's ResolutionError: a revision these scripts never had
            known = False
        newer = newer or not known
    raise SchemaNotCurrent(current, heads, newer=newer)
