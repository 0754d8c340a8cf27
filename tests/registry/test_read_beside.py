"""`read_beside`: a page's independent read on a second connection, started while the caller goes
on with its own statements (PostgreSQL), or at once on the caller's connection (SQLite)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, InternalError
from sqlalchemy.orm import sessionmaker

from registry.db import make_engine, read_beside, session_factory

LOCK = 424242  # an advisory lock's key, held by the caller while the read beside waits for it


def _waiting_for_the_lock(connection: Connection) -> int:
    return int(
        connection.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :key "
                "AND NOT granted"
            ),
            {"key": LOCK},
        )
    )


def test_on_postgresql_it_runs_on_its_own_connection_while_the_caller_goes_on(pg_url: str) -> None:
    sessions = session_factory(pg_url)
    engine = sessions.kw["bind"]
    with sessions() as session, engine.connect() as observer:
        own_pid = session.scalar(text("SELECT pg_backend_pid()"))
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK})

        def read(connection: Connection) -> int:
            # Granted on the caller's own connection at once; on another, only once the
            # caller's transaction ends.
            connection.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": LOCK})
            return int(connection.scalar(text("SELECT pg_backend_pid()")))

        result = read_beside(session, read)
        deadline = time.monotonic() + 10
        while _waiting_for_the_lock(observer) == 0:  # the read is running, beside the caller
            assert time.monotonic() < deadline, "the read beside never asked for the lock"
            time.sleep(0.01)
            observer.rollback()
        session.commit()  # releases the lock: the read beside goes on
        assert result() != own_pid
    assert engine.pool.checkedout() == 0  # its connection went back to the pool


def test_on_postgresql_the_read_beside_is_read_only_and_its_error_is_raised(pg_url: str) -> None:
    sessions = session_factory(pg_url)
    with sessions() as session:
        write = read_beside(session, lambda c: c.execute(text("CREATE TABLE beside (id int)")))
        with pytest.raises(InternalError, match="read-only transaction"):
            write()
        broken = read_beside(session, lambda c: c.execute(text("SELECT no_such_column")))
        with pytest.raises(DBAPIError, match="no_such_column"):
            broken()
        # Neither touched the caller's transaction.
        assert session.scalar(text("SELECT 1")) == 1
    assert sessions.kw["bind"].pool.checkedout() == 0


def test_with_no_connection_to_lend_it_runs_at_once_on_the_callers_connection(
    pg_url: str,
) -> None:
    # A read beside that waited for the pool while its caller holds a connection could wait for
    # ever: enough such callers would hold every connection. With none to lend, it runs here.
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    try:
        with sessionmaker(bind=engine)() as session:
            own_pid = session.scalar(text("SELECT pg_backend_pid()"))  # the pool's only one
            result = read_beside(session, lambda c: c.scalar(text("SELECT pg_backend_pid()")))
            assert result() == own_pid
    finally:
        engine.dispose()


def test_on_sqlite_it_runs_at_once_on_the_callers_connection(tmp_path: Path) -> None:
    sessions = session_factory(f"sqlite:///{tmp_path / 'beside.db'}")
    with sessions() as session:
        seen: list[Connection] = []

        def read(connection: Connection) -> int:
            seen.append(connection)
            return 7

        result = read_beside(session, read)
        assert seen == [session.connection()]  # already ran, before anything waited
        assert result() == 7
