"""Rows written and read on the session's connection, without the ORM's unit of work.

The hot path's single-row writes (`insert_row`, `update_row`), its Core statements
(`execute`) and its reads (`load_rows`, `attach_rows`): each sends one cached statement and
leaves the session holding the instances as if a flush or a query had, at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import CursorResult, Executable, Table, bindparam
from sqlalchemy import insert as sa_insert
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import update as sa_update
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.dml import Insert, Update

_M = TypeVar("_M")


def insert_row(
    session: Session,
    instance: object,
    *,
    unless_exists: str | None = None,
    statement: Insert | None = None,
    params: dict[str, Any] | None = None,
) -> bool:
    """INSERT the new `instance` now, in one cached statement, and attach it to the session as
    if it had just been loaded: what a flush does for one row, without the unit of work's
    bookkeeping (the hot path's writes: a flush costs several times the statement it sends).

    Python-side column defaults are applied to the instance first. Pending ORM changes are
    flushed before, so the row can reference them. For models whose rows get a value from the
    database (an autoincrement key, a server default left unset): ValueError, use a flush.
    `unless_exists`: a unique column; a row that already has the instance's value there is left
    as it is, nothing is written, and False is returned (ON CONFLICT DO NOTHING).
    `statement`: a prebuilt INSERT of the table to send instead, with the row's values and
    `params`; columns whose value it computes in the database (the tenant's next number, read in
    the same statement) it RETURNs, and they are set on the instance.
    """
    mapper = sa_inspect(type(instance))
    values = _values_of(instance)
    if statement is not None:
        computed = execute(session, statement, {**values, **(params or {})}).one()._mapping
        table = mapper.local_table
        for name, value in computed.items():
            setattr(instance, mapper.get_property_by_column(table.c[name]).key, value)
    else:
        dialect_name = session.get_bind().dialect.name
        insert = _insert_of(mapper.local_table, dialect_name, unless_exists)
        result = execute(session, insert, values)
        if unless_exists is not None and result.first() is None:  # nothing came back: skipped
            return False
    make_transient_to_detached(instance)
    session.add(instance)
    return True


def insert_rows(session: Session, *instances: object) -> None:
    """`insert_row` for several new instances (of different tables) in one statement, on
    PostgreSQL only: each row but the last is written by a data-modifying CTE of the last's
    INSERT. A row may reference one written with it (foreign keys are checked when the statement
    ends, after all of them)."""
    tables = tuple(sa_inspect(type(instance)).local_table for instance in instances)
    params: dict[str, Any] = {}
    for n, instance in enumerate(instances):
        params.update({f"r{n}_{key}": value for key, value in _values_of(instance).items()})
    execute(session, _inserts_of(tables), params)
    for instance in instances:
        make_transient_to_detached(instance)
        session.add(instance)


def _values_of(instance: object) -> dict[str, Any]:
    # The row of a new instance, Python-side column defaults applied to the instance first.
    mapper = sa_inspect(type(instance))
    values: dict[str, Any] = {}
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        if prop.key not in instance.__dict__:
            default = column.default
            if default is not None and getattr(default, "is_scalar", False):
                setattr(instance, prop.key, default.arg)
            elif default is not None and getattr(default, "is_callable", False):
                setattr(instance, prop.key, default.arg(None))
            elif column.server_default is not None or column.autoincrement is True:
                raise ValueError(f"{column} is filled by the database: flush instead")
            else:
                setattr(instance, prop.key, None)
        values[column.key] = instance.__dict__[prop.key]
    return values


def update_row(session: Session, instance: object, **values: Any) -> bool:
    """UPDATE the persistent `instance`'s row now with the attributes in `values` that differ
    from its own, in one cached statement, and set them on the instance as loaded (a later flush
    does not write them again). False, and no statement, when nothing differs."""
    session.flush()  # its loaded state is then the row's
    changed = {key: value for key, value in values.items() if getattr(instance, key) != value}
    if not changed:
        return False
    mapper = sa_inspect(type(instance))
    keys = tuple(sorted(changed))
    params = {f"set_{mapper.get_property(k).columns[0].key}": v for k, v in changed.items()}
    for column in mapper.primary_key:
        params[f"pk_{column.key}"] = getattr(instance, mapper.get_property_by_column(column).key)
    columns = tuple(mapper.get_property(k).columns[0].key for k in keys)
    execute(session, _update_of(mapper.local_table, columns), params)
    for key, value in changed.items():
        set_committed_value(instance, key, value)
    return True


def execute(session: Session, statement: Executable, params: dict[str, Any]) -> CursorResult[Any]:
    """A Core statement (of tables, not ORM entities) on the session's connection, in its
    transaction: `session.execute` without the ORM's per-statement work, which costs the hot path
    about as much as the driver's. No autoflush: pending ORM changes are flushed first, always."""
    session.flush()  # nothing to do (and no statement) unless ORM changes are pending
    return session.connection().execute(statement, params)


def load_rows(
    session: Session, model: type[_M], statement: Executable, params: dict[str, Any]
) -> list[_M]:
    """The `model` instances for the rows `statement` (a Core SELECT of every column of the
    model's table) returns, as a `populate_existing` ORM query would give them: an instance the
    session already holds is updated to the row, any other is attached as loaded. For the hot
    path's reads, where the ORM's per-query setup costs several times the statement. Pending ORM
    changes are flushed first, so the rows include them."""
    return attach_rows(session, model, execute(session, statement, params).mappings())


def attach_rows(session: Session, model: type[_M], rows: Iterable[Mapping[Any, Any]]) -> list[_M]:
    """`load_rows` for rows already fetched: mappings holding (at least) every column of the
    model's table under its name."""
    mapper = sa_inspect(model)
    props = [(prop.key, prop.columns[0].key) for prop in mapper.column_attrs]
    primary = [column.key for column in mapper.primary_key]
    found: list[_M] = []
    for row in rows:
        key = mapper.identity_key_from_primary_key([row[name] for name in primary])
        instance: Any = session.identity_map.get(key)
        fresh = instance is None
        if fresh:
            instance = mapper.class_manager.new_instance()
        for attribute, column in props:
            set_committed_value(instance, attribute, row[column])
        if fresh:
            make_transient_to_detached(instance)
            session.add(instance)
        found.append(instance)
    return found


@lru_cache(maxsize=64)
def _insert_of(table: Table, dialect_name: str, unless_exists: str | None) -> Insert:
    if unless_exists is None:
        return sa_insert(table)
    from registry import dialect

    # RETURNING tells whether the row went in (rowcount is not reliable for an INSERT).
    return (
        dialect.insert_for(dialect_name, table)
        .on_conflict_do_nothing(index_elements=[unless_exists])
        .returning(*table.primary_key.columns)
    )


@lru_cache(maxsize=16)
def _inserts_of(tables: tuple[Table, ...]) -> Insert:
    # Built once per shape, like `_update_of`. Each row's values are bound under its own prefix
    # (the tables share column names).
    rows = [
        sa_insert(table).values({c.key: bindparam(f"r{n}_{c.key}", type_=c.type) for c in table.c})
        for n, table in enumerate(tables)
    ]
    *written_first, last = rows
    return last.add_cte(*(row.cte(f"row{n}") for n, row in enumerate(written_first)))


@lru_cache(maxsize=256)
def _update_of(table: Table, columns: tuple[str, ...]) -> Update:
    # Built once per shape: a prebuilt statement's cache key is memoized, a new one's is not.
    where = [column == bindparam(f"pk_{column.key}") for column in table.primary_key.columns]
    return (
        sa_update(table).where(*where).values({name: bindparam(f"set_{name}") for name in columns})
    )
