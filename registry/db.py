"""Engines, sessions and the unit of work.

PostgreSQL through psycopg 3 in production; a SQLite file as the embedded default. On SQLite every
transaction starts with BEGIN IMMEDIATE, so writers are serialized (SQLAlchemy drops FOR UPDATE
there) and a read-then-write never meets a concurrent writer halfway.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.orm import Session, sessionmaker

from registry.models import Tenant

SQLITE_BUSY_TIMEOUT_MS = 30_000
LOCKED_TENANTS_KEY = "ftdeploy.locked_tenants"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`, configured for this project's locking on either database."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    return create_engine(url, **kwargs)


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
def unit_of_work(url: str | None = None) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises.

    Registry functions only flush; the door that opened the unit of work commits here, and sends
    follow-up tasks only after this block has returned.
    """
    session = session_factory(url)()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


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
    tenant = session.scalars(
        select(Tenant)
        .where(Tenant.id == tenant_id)
        .with_for_update(key_share=True)
        # The ORM may hold this row from before the lock: take what is committed now.
        .execution_options(populate_existing=True)
    ).one_or_none()
    if tenant is None:
        from registry.errors import TenantNotFound

        raise TenantNotFound(str(tenant_id))
    locked[tenant_id] = tenant
    return tenant


@event.listens_for(Session, "after_transaction_end")
def _forget_locks(session: Session, transaction: Any) -> None:
    # Locks end with the transaction, and PostgreSQL also releases those taken inside a savepoint
    # that is rolled back: forget them at the end of any transaction, nested or not.
    session.info.pop(LOCKED_TENANTS_KEY, None)


def ping(session: Session) -> None:
    session.execute(text("SELECT 1"))
