"""A tenant's production versions, read under its lock by every change and by the router on a
cache miss, come from their own partial index on PostgreSQL, in the generic plan too: psycopg
prepares a statement after its fifth run, and PostgreSQL then settles on a plan made without the
parameters' values. With `status` a parameter that plan could not use the index, and each read
walked the tenant's whole history (the cost of an event grew with every version registered)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import Engine

from registry.db import session_factory, unit_of_work
from registry.jobs import pipeline
from registry.router import Router
from tests.factories import job_snapshot, make_tenant
from tests.statements import recorded_statements

INDEX = "ix_ai_model_versions_tenant_production"
HISTORY = 300  # versions registered and replaced first: more pages than a scan of them is worth


def test_every_production_read_uses_the_production_index_in_a_generic_plan(pg_url: str) -> None:
    with unit_of_work(pg_url) as session:
        slug = make_tenant(session, require_evaluation=False).slug
    for _ in range(HISTORY):
        with unit_of_work(pg_url) as session:
            pipeline.complete_job(session, job_snapshot(tenant=slug), slug)
    sessions = session_factory(pg_url)
    engine: Engine = sessions.kw["bind"]
    with engine.connect() as connection:
        connection.execute(text("ANALYZE"))
        connection.commit()

    def deploy() -> None:
        with unit_of_work(pg_url) as session:
            pipeline.complete_job(session, job_snapshot(tenant=slug), slug)

    reads = _production_reads(engine, deploy)
    reads += _production_reads(engine, lambda: Router(sessions, staleness=0).snapshot(slug))
    # The deploy's read under the lock and its audited check; the router's snapshot.
    assert len(reads) >= 3, [statement[:80] for statement, _ in reads]
    for statement, parameters in reads:
        plan = _generic_plan(engine, statement, parameters)
        assert INDEX in plan, f"{statement}\n{plan}"


def _production_reads(engine: Engine, run: Callable[[], object]) -> list[tuple[str, Any]]:
    with recorded_statements(engine) as seen:
        run()
    return [(s, p) for s, p in seen if "ai_model_versions" in s and ".status = " in s]


def _generic_plan(engine: Engine, statement: str, parameters: dict[str, Any]) -> str:
    """EXPLAIN of the statement prepared server-side, with the plan made without its values."""
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", statement)))
    prepared = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", statement)
    raw = engine.raw_connection()
    try:
        connection = raw.driver_connection
        assert isinstance(connection, psycopg.Connection)
        cursor = psycopg.ClientCursor(connection)  # EXECUTE takes its values as literals
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        cursor.execute("PREPARE production_read AS " + prepared)
        values = ", ".join("%s" for _ in names)
        cursor.execute(f"EXPLAIN EXECUTE production_read({values})", [parameters[n] for n in names])
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE production_read")  # a rollback keeps it
        connection.rollback()
        return plan
    finally:
        raw.close()
