"""Engines, sessions and the unit of work.

PostgreSQL through psycopg 3 in production; a SQLite file as the embedded default. On SQLite every
transaction starts with BEGIN IMMEDIATE, so writers are serialized (SQLAlchemy drops FOR UPDATE
there) and a read-then-write never meets a concurrent writer halfway.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Executable, bindparam, create_engine, event, select, text
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.pool import QueuePool

from registry.models import Tenant
from registry.rows import load_rows

log = logging.getLogger("ftdeploy.db")

SQLITE_BUSY_TIMEOUT_MS = 30_000
LOCKED_TENANTS_KEY = "ftdeploy.locked_tenants"
LOCKED_POLICIES_KEY = "ftdeploy.locked_policies"
AFTER_COMMIT_KEY = "ftdeploy.after_commit"

T = TypeVar("T")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`, configured for this project's locking on either database.

    On PostgreSQL a connection that sat in the pool longer than `PING_AFTER_IDLE_SECONDS` is
    pinged before it is handed out, and replaced if the ping fails (`pool_pre_ping=True` asks
    for a ping at every checkout instead)."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url, **kwargs)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_idle_connections(engine)
    return engine


# A busy worker checks a connection out twice per event, a few milliseconds after checking it in:
# a ping then would be a round trip (and a SELECT on the server) that finds nothing. A connection
# that sat longer may have outlived a database restart or a terminated backend, and is pinged;
# one that breaks within the second fails its first statement, which the tasks retry like any
# disconnect (and SQLAlchemy then replaces the pool's older connections too).
PING_AFTER_IDLE_SECONDS = 1.0
_IDLE_SINCE = "ftdeploy.idle_since"


def _ping_idle_connections(engine: Engine) -> None:
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # `record.info` belongs to the DBAPI connection: a new one has no mark and is pinged.
        idle_since = record.info.pop(_IDLE_SINCE, None)
        if idle_since is not None and time.monotonic() - idle_since <= PING_AFTER_IDLE_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if not dialect.is_disconnect(error, dbapi_connection, None):
                raise
            # As `pool_pre_ping` does: the database probably restarted, so the pool discards
            # every connection older than now and opens a new one for this checkout.
            raise InvalidatePoolError(f"ping failed: {type(error).__name__}") from error


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    database = url.split("///", 1)[-1]
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@lru_cache(maxsize=8)
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=make_engine(url), expire_on_commit=False)


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    """The process-wide session factory for `url` (default: the configured database)."""
    if url is None:
        from registry.settings import get_settings

        url = get_settings().database_url_value
    return _session_factory(url)


@contextmanager
def unit_of_work(database: str | sessionmaker[Session] | None = None) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises.

    The doors (tasks, CLI commands, HTTP handlers) open one per logical step; registry functions
    only flush. What registry code asked to happen after the commit (`after_commit`: follow-up
    messages, routing invalidation) runs once the commit succeeded, before this block returns,
    and is dropped on a rollback. `database`: a URL or a session factory (default: the
    configured database).
    """
    sessions = database if isinstance(database, sessionmaker) else session_factory(database)
    session = sessions()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


@contextmanager
def one_statement(database: str | sessionmaker[Session] | None = None) -> Iterator[Session]:
    """A unit of work for a step that writes with one statement, which needs no transaction
    around it: on PostgreSQL the session's connection is in autocommit mode (no BEGIN and COMMIT
    round trips; the statement commits as it runs, atomically by itself). On SQLite, a plain
    `unit_of_work`. Only for registry calls documented to send one statement here."""
    sessions = database if isinstance(database, sessionmaker) else session_factory(database)
    bind = sessions.kw["bind"]
    if bind.dialect.name != "postgresql":
        with unit_of_work(sessions) as session:
            yield session
        return
    session = sessions()
    try:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session
        session.commit()
    finally:
        session.close()


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run `callback` once the session's outermost transaction has committed, in the order the
    callbacks were registered; never if that transaction (or the savepoint that was current when
    it was registered) rolls back. A callback that raises is logged and the others still run:
    the data is committed by then, so the commit itself does not fail.

    The session may be committed by `unit_of_work` or directly; any Session gets this.
    """
    current = session.get_nested_transaction() or session.get_transaction()
    session.info.setdefault(AFTER_COMMIT_KEY, []).append((current, callback))


def _within(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ended:
            return True
        transaction = transaction.parent
    return False


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    # A savepoint's release also fires after_commit: nothing is visible to other connections
    # until the outer transaction commits, so wait for that one.
    if session.in_nested_transaction():
        return
    pending = session.info.pop(AFTER_COMMIT_KEY, None) or []
    for _, callback in pending:
        try:
            callback()
        except Exception:
            log.exception("after_commit.failed", extra={"ftdeploy_fields": {"callback": callback}})


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    # A savepoint's rollback drops only what was registered inside it.
    pending = session.info.get(AFTER_COMMIT_KEY)
    if pending:
        session.info[AFTER_COMMIT_KEY] = [
            entry for entry in pending if not _within(entry[0], previous_transaction)
        ]


@event.listens_for(Session, "after_transaction_end")
def _end_of_transaction(session: Session, transaction: SessionTransaction) -> None:
    # Locks end with the transaction, and PostgreSQL also releases those taken inside a savepoint
    # that is rolled back: forget them at the end of the transaction or of any savepoint. Not at
    # the end of the subtransaction every flush opens: that ends nothing on the database.
    if transaction.nested or transaction.parent is None:
        session.info.pop(LOCKED_TENANTS_KEY, None)
        session.info.pop(LOCKED_POLICIES_KEY, None)  # read under those locks
    if transaction.parent is None:
        # Committed (and already run by now), rolled back or closed: nothing carries over to the
        # session's next transaction.
        session.info.pop(AFTER_COMMIT_KEY, None)


def lock_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant:
    """Take the tenant's lock for the rest of the transaction and return the tenant.

    PostgreSQL: a row lock on the tenant (SELECT … FOR NO KEY UPDATE), so every change of its
    versions or traffic is serialized and sees the state committed before it. NO KEY: inserts
    that only reference the tenant (outcome counters, operations, runs) are not blocked by it.
    SQLite: the transaction already holds the database's write lock (BEGIN IMMEDIATE).
    Taking it again in the same transaction costs nothing: the lock is held until the end.
    """
    locked: dict[uuid.UUID, Tenant] = session.info.setdefault(LOCKED_TENANTS_KEY, {})
    if tenant_id in locked:
        return locked[tenant_id]
    tenant = _lock_where(session, "id", tenant_id)
    if tenant is None:
        from registry.errors import TenantNotFound

        raise TenantNotFound(str(tenant_id))
    return tenant


def lock_tenant_by_slug(session: Session, slug: str) -> Tenant | None:
    """`lock_tenant` for a tenant named by its slug, found and locked in one statement; None
    when no tenant has that slug."""
    locked: dict[uuid.UUID, Tenant] = session.info.setdefault(LOCKED_TENANTS_KEY, {})
    for tenant in locked.values():
        if tenant.slug == slug:
            return tenant
    return _lock_where(session, "slug", slug)


def _lock_where(session: Session, by: str, value: object) -> Tenant | None:
    # The ORM may hold this row from before the lock: load_rows takes what is committed now.
    found = load_rows(session, Tenant, _lock_statement(by), {"value": value})
    tenant = found[0] if found else None
    if tenant is not None:
        session.info.setdefault(LOCKED_TENANTS_KEY, {})[tenant.id] = tenant
    return tenant


@lru_cache(maxsize=2)
def _lock_statement(by: str) -> Executable:
    tenants = Tenant.__table__
    return (
        select(tenants)
        .where(tenants.c[by] == bindparam("value"))
        .with_for_update(key_share=True)  # FOR NO KEY UPDATE (dropped on SQLite)
    )


def ping(session: Session) -> None:
    session.execute(text("SELECT 1"))


# The threads of `read_beside`: a few reads at a time per process.
_BESIDE = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ftdeploy-read-beside")


def read_beside(session: Session, read: Callable[[Connection], T]) -> Callable[[], T]:
    """Start `read` on a second connection of the session's engine and return a function that
    waits for its result (or raises its error): for a page's independent reads, so that their
    time in PostgreSQL overlaps the caller's own statements. The second connection reads in its
    own READ ONLY transaction, ended by a commit (which, unlike a rollback, keeps the statements
    psycopg prepared on it), so it does not see what the caller's transaction has written and
    not committed. Elsewhere (SQLite, a session bound to one connection), or when the pool
    cannot lend a connection without waiting, `read` runs at once on the session's connection."""
    bind = session.get_bind()
    if isinstance(bind, Engine) and bind.dialect.name == "postgresql" and _can_lend(bind):
        # Checked out here, not in the thread beside: that thread then never waits for the pool
        # while its caller holds a connection of it (enough such callers would hold them all).
        connection = bind.connect()
        return _BESIDE.submit(_read_on, connection, read).result
    result = read(session.connection())
    return lambda: result


def _can_lend(engine: Engine) -> bool:
    """Whether the engine's pool has a connection to lend now, idle or still to open, without
    waiting for one to come back."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return False
    # QueuePool counts its overflow up from -pool_size and opens connections while it is below
    # max_overflow (-1: no limit), which only the pool's own attribute keeps.
    limit = pool._max_overflow
    return pool.checkedin() > 0 or limit < 0 or pool.overflow() < limit


def _read_on(connection: Connection, read: Callable[[Connection], T]) -> T:
    with connection:
        connection.execution_options(postgresql_readonly=True)
        result = read(connection)
        connection.commit()
        return result
