"""ftdeploy's Prometheus metrics: every name, help text and label set is one `MetricSpec`
below (the webhook receiver's counter too); the worker's are served on FTDEPLOY_METRICS_PORT
(on FTDEPLOY_METRICS_HOST, 127.0.0.1 by default).

Counters get Prometheus' `_total` suffix when exposed. Job events count done, failed, refused,
retry and error; promotions and rollbacks are labelled `auto` (the sweep) or `operator` (queued
operations); canary decisions count the sweep's hold, step, promote, rollback and error, applied
or not. The deployments gauge is read from the database at scrape time, so it is exact across
processes and restarts.

Prefork: tasks run in the pool's child processes while the HTTP server runs in the main one. We
use prometheus_client's multiprocess mode. On `worker_init` (main process, before the pool
forks) `start_server` points PROMETHEUS_MULTIPROC_DIR at a fresh directory of its own; children
inherit it, each process keeps its values in its own mmap file there, and each scrape sums the
files (`MultiProcessCollector`), including those of children that have since exited, so counters
never go back. prometheus_client picks its value storage when a metric value is first created,
so the metrics are built lazily, on first use, never at import.

Notification metrics are in `worker.notify_metrics`, served here too.

Processes that do not serve (the CLI, the webhook receiver, a worker without a metrics port)
keep the same metrics in memory, unserved; calling these functions is always safe.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import UpstreamPermanent, UpstreamTransient
from registry.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client import Counter, Histogram
    from prometheus_client.metrics_core import Metric

    from registry.canary.outcomes import StoreResult
    from registry.canary.sweep import SweepReport

log = logging.getLogger("ftdeploy.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SWEEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    help: str
    labels: tuple[str, ...] = ()


JOB_EVENTS = MetricSpec(
    "ftdeploy_job_events", "Job-finished events handled, by outcome.", ("outcome",)
)
PROMOTIONS = MetricSpec(
    "ftdeploy_promotions", "Promotions and canary steps applied, by actor.", ("actor",)
)
ROLLBACKS = MetricSpec("ftdeploy_rollbacks", "Rollbacks applied, by actor.", ("actor",))
CANARY_DECISIONS = MetricSpec(
    "ftdeploy_canary_decisions", "Auto-promote sweep decisions, by action.", ("action",)
)
OPENAI_ERRORS = MetricSpec(
    "ftdeploy_openai_errors", "Failed OpenAI calls, by error class.", ("error_class",)
)
OUTCOMES_RECORDED = MetricSpec("ftdeploy_outcomes_recorded", "Online outcomes stored.")
OUTCOMES_REFUSED = MetricSpec(
    "ftdeploy_outcomes_refused", "Online outcomes refused, by field.", ("field",)
)
SWEEP_DURATION = MetricSpec(
    "ftdeploy_sweep_duration_seconds", "Duration of one auto-promote sweep."
)
DEPLOYMENTS = MetricSpec(
    "ftdeploy_deployments",
    "Deployments in the database, by strategy and status.",
    ("strategy", "status"),
)
WEBHOOK_DELIVERIES = MetricSpec(
    "ftdeploy_webhooks",
    "OpenAI webhook deliveries received, by outcome "
    "(recorded, duplicate, ignored, refused, unavailable).",
    ("outcome",),
)


@dataclass(frozen=True)
class _Metrics:
    job_events: Counter
    promotions: Counter
    rollbacks: Counter
    decisions: Counter
    openai_errors: Counter
    outcomes_recorded: Counter
    outcomes_refused: Counter
    sweep_duration: Histogram


_lock = threading.Lock()
_metrics: _Metrics | None = None


def _get() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _build()
    return _metrics


def _build() -> _Metrics:
    from prometheus_client import Counter, Histogram

    def counter(spec: MetricSpec) -> Counter:
        return Counter(spec.name, spec.help, spec.labels)

    return _Metrics(
        job_events=counter(JOB_EVENTS),
        promotions=counter(PROMOTIONS),
        rollbacks=counter(ROLLBACKS),
        decisions=counter(CANARY_DECISIONS),
        openai_errors=counter(OPENAI_ERRORS),
        outcomes_recorded=counter(OUTCOMES_RECORDED),
        outcomes_refused=counter(OUTCOMES_REFUSED),
        sweep_duration=Histogram(SWEEP_DURATION.name, SWEEP_DURATION.help, buckets=SWEEP_BUCKETS),
    )


def actor_label(actor: str) -> str:
    """Bounded label values: `auto` or `operator` (an operator's name stays in the audit)."""
    return "auto" if actor == "auto" else "operator"


def job_event(outcome: str) -> None:
    _get().job_events.labels(outcome=outcome).inc()


def traffic_change(kind: str, actor: str) -> None:
    """A promotion (or canary step) or a rollback that was applied."""
    counter = _get().rollbacks if kind == "rollback" else _get().promotions
    counter.labels(actor=actor_label(actor)).inc()


def openai_error(error: BaseException) -> None:
    """Count `error` if it is a failed OpenAI call; anything else is ignored."""
    if isinstance(error, UpstreamTransient | UpstreamPermanent):
        _get().openai_errors.labels(error_class=type(error).__name__).inc()


def sweep_report(report: SweepReport) -> None:
    metrics = _get()
    metrics.sweep_duration.observe(report.duration_seconds)
    for action, count in report.decisions().items():
        metrics.decisions.labels(action=action).inc(count)
    for item in report.applied():
        traffic_change("rollback" if item.action == "rollback" else "promote", "auto")


def outcomes_stored(result: StoreResult) -> None:
    metrics = _get()
    if result.recorded:
        metrics.outcomes_recorded.inc(result.recorded)
    for refusal in result.refused:
        metrics.outcomes_refused.labels(field=refusal.field).inc()


class OutcomeMetrics:
    """An `OutcomeObserver` for an in-process recorder: feeds the outcome counters."""

    def recorded(self, count: int) -> None:
        _get().outcomes_recorded.inc(count)

    def refused(self, field: str) -> None:
        _get().outcomes_refused.labels(field=field).inc()


class DeploymentsCollector:
    """The DEPLOYMENTS gauge, counted in the database at each scrape.

    Uses its own engine without a pool: no connection of the main process is left open for a
    pool child forked later to inherit."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._engine: Any = None

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily
        from sqlalchemy import create_engine, func, select
        from sqlalchemy.pool import NullPool

        from registry.models import Deployment

        family = GaugeMetricFamily(
            DEPLOYMENTS.name, DEPLOYMENTS.help, labels=list(DEPLOYMENTS.labels)
        )
        try:
            if self._engine is None:
                self._engine = create_engine(self._url, poolclass=NullPool)
            with self._engine.connect() as connection:
                rows = connection.execute(
                    select(Deployment.strategy, Deployment.status, func.count()).group_by(
                        Deployment.strategy, Deployment.status
                    )
                ).all()
        except Exception as error:  # a scrape must not fail because the database is away
            log.warning(
                "metrics.deployments_unavailable", extra=_fields(error=type(error).__name__)
            )
            return
        for strategy, status, count in rows:
            family.add_metric([strategy, status], count)
        yield family


def _fields(**fields: Any) -> dict[str, Any]:
    return {"ftdeploy_fields": fields}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_multiprocess(settings: Settings) -> Path:
    """Point this process (and the children it forks later) at a fresh metrics directory, and
    remove the directories of worker processes that are gone. Returns the directory."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:  # the operator chose one: use it as it is
        return Path(given)
    base = (settings.data_dir / "metrics").resolve()
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        if old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    directory = base / str(os.getpid())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    os.environ[MULTIPROC_ENV] = str(directory)
    # prometheus_client reads the variable when first imported; if something imported it
    # before, make it use the files from now on (our metrics are created lazily, after this).
    import prometheus_client.values as values

    values.ValueClass = values.get_value_class()
    return directory


def start_server(settings: Settings) -> int | None:
    """Serve /metrics on settings.metrics_port from this (the worker's main) process; returns the
    port bound (useful with port 0), or None when no port is configured."""
    if settings.metrics_port is None:
        return None
    directory = prepare_multiprocess(settings)
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    registry.register(DeploymentsCollector(settings.database_url_value))
    from worker.notify_metrics import BacklogCollector

    registry.register(BacklogCollector(settings.database_url_value))
    # FTDEPLOY_METRICS_HOST, loopback by default: the metrics are served without authentication.
    server, _ = start_http_server(
        settings.metrics_port, addr=settings.metrics_host, registry=registry
    )
    return int(server.server_port)


def process_exited(pid: int) -> None:
    """Bookkeeping for a pool child that exits (multiprocess mode only)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
