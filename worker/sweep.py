"""The door of the auto-promote sweep: one short unit of work to plan, then one per canary action
and one per tenant's retention, each isolated.

Notifications are written in the same units of work: a canary's decision with its action
(`notices.canary_decided`, from `registry.canary.sweep.apply`), and the canaries held past a
share of their deadline in one unit of work of their own, only when there are any.

A canary whose action fails (a bug caught by the invariant, a deadlock, a dropped connection) is
reported in its item and rolled back alone; a tenant whose retention fails is reported in
`SweepReport.retention_errors`. The others proceed, and the report (metrics, logs) is complete
either way; the next sweep decides afresh.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from registry import clock
from registry.canary import retention, sweep
from registry.canary.canaries import Assessment
from registry.db import unit_of_work
from registry.errors import FtdeployError
from registry.notify import notices

log = logging.getLogger("ftdeploy.sweep")

# What one canary's or tenant's unit of work may fail with and the sweep survives: expected
# failures and the database's. Anything else is a bug and ends the sweep loudly.
ISOLATED_ERRORS = (FtdeployError, SQLAlchemyError)

Database = str | sessionmaker[Session] | None


def run_sweep(now: datetime | None = None, *, database: Database = None) -> sweep.SweepReport:
    """One sweep over all live canaries, then retention. Safe to run concurrently with itself and
    with operators' changes (see `registry.canary.sweep`); each applied action is one unit of
    work, so a crash midway leaves every canary either moved or not."""
    started = time.perf_counter()
    now = now or clock.now()
    report = sweep.SweepReport(started_at=now)
    with unit_of_work(database) as session:
        assessments = sweep.plan(session, now)
    report.canaries = len(assessments)
    report.items = [apply_one(assessment, database=database) for assessment in assessments]
    tell_holding(assessments, now, database=database)
    report.archived, report.retention_errors = run_retention(database=database)
    report.duration_seconds = time.perf_counter() - started
    return report


def apply_one(assessment: Assessment, *, database: Database = None) -> sweep.SweepItem:
    """Apply one canary's decision in its own unit of work; its failure is reported, not raised."""
    if not sweep.needs_applying(assessment):
        return sweep.item_of(assessment)
    try:
        with unit_of_work(database) as session:
            return sweep.apply(session, assessment)
    except ISOLATED_ERRORS as error:
        return sweep.failed(assessment, error)


def tell_holding(assessments: list[Assessment], now: datetime, *, database: Database = None) -> int:
    """Tell of the canaries held past a share of their deadline (`notices.canaries_holding`), in
    one unit of work, opened only if there are any. A failure is logged, not raised: the notice
    is the next sweep's. Returns how many were written."""
    holding = notices.held_past_share(assessments, now)
    if not holding:
        return 0
    try:
        with unit_of_work(database) as session:
            return notices.canaries_holding(session, holding, now)
    except ISOLATED_ERRORS as error:
        log.warning(
            "sweep.holding_failed", extra={"ftdeploy_fields": {"error": type(error).__name__}}
        )
        return 0


def run_retention(*, database: Database = None) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Archive beyond retention for every tenant that needs it, one unit of work per tenant.
    Returns ({tenant slug: archived version numbers}, {tenant slug: why it failed})."""
    archived: dict[str, list[int]] = {}
    errors: dict[str, str] = {}
    try:
        with unit_of_work(database) as session:
            tenants = retention.tenants_to_archive(session)
    except ISOLATED_ERRORS as error:
        return archived, {"*": f"{type(error).__name__}: {error}"[:500]}
    for tenant_id, slug in tenants:
        try:
            with unit_of_work(database) as session:
                numbers = retention.archive_beyond_retention(session, tenant_id)
        except ISOLATED_ERRORS as error:
            errors[slug] = f"{type(error).__name__}: {error}"[:500]
            continue
        if numbers:
            archived[slug] = numbers
    return archived, errors
