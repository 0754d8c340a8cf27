"""Wires the worker's logs and metrics into Celery's lifecycle (imported by `worker.tasks`).

- Logs: once Celery has set up logging, the `ftdeploy` loggers write one line per event to the
  process's real stderr, as `key=value` text or, with FTDEPLOY_LOG_JSON, one JSON object per
  line (fields: event, tenant, job, version, … as each event gives them).
- Metrics: the main process starts the /metrics server on `worker_init`, before the pool forks
  (see `worker.metrics` for the multiprocess mode); job events and operators' promotions and
  rollbacks are counted from the tasks' results (Celery's task signals), so the tasks themselves
  stay thin.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from celery import signals

from registry.settings import get_settings
from worker import logs, metrics
from worker.logs import MaskingFilter, event

if TYPE_CHECKING:
    from registry.canary.sweep import SweepReport

log = logging.getLogger("ftdeploy.worker")

JOB_TASK = "ftdeploy.job_finished"
OPERATION_TASKS = {"ftdeploy.promote": "promote", "ftdeploy.rollback": "rollback"}


@signals.after_setup_logger.connect
def _on_logging_ready(logger: Any = None, loglevel: Any = None, **_: Any) -> None:
    logs.configure(get_settings().log_json, loglevel or logging.INFO)
    _mask_handlers(logger)


@signals.after_setup_task_logger.connect
def _on_task_logging_ready(logger: Any = None, **_: Any) -> None:
    _mask_handlers(logger)


def _mask_handlers(logger: logging.Logger | None) -> None:
    # Celery's own lines quote exceptions (a task's error, a connection failure): masked and
    # bounded like ours.
    for handler in getattr(logger, "handlers", ()):
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())


# What the metrics server did at worker_init, logged once logging is up (Celery sets up logging
# after worker_init, so a line logged there would be lost).
_metrics_start: dict[str, Any] = {}


@signals.worker_init.connect
def _on_worker_init(**_: Any) -> None:
    # Before the pool forks: the children must inherit the multiprocess directory.
    try:
        _metrics_start["port"] = metrics.start_server(get_settings())
    except OSError as error:
        # The worker still does its work; the missing metrics are loud in the log.
        _metrics_start["error"] = str(error)


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    if "error" in _metrics_start:
        event(log, "metrics.unavailable", logging.ERROR, reason=_metrics_start["error"])
    elif _metrics_start.get("port") is not None:
        event(log, "metrics.serving", port=_metrics_start["port"], pid=os.getpid())


@signals.worker_process_shutdown.connect
def _on_child_exit(pid: int | None = None, **_: Any) -> None:
    metrics.process_exited(pid or os.getpid())


@signals.task_success.connect
def _on_task_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    name = getattr(sender, "name", None)
    status = result.get("status") if isinstance(result, dict) else None
    if name == JOB_TASK and isinstance(status, str):
        metrics.job_event(status)
    elif name in OPERATION_TASKS and status == "succeeded":
        metrics.traffic_change(OPERATION_TASKS[name], "operator")


@signals.task_retry.connect
def _on_task_retry(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) == JOB_TASK:
        metrics.job_event("retry")


@signals.task_failure.connect
def _on_task_failure(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) == JOB_TASK:
        metrics.job_event("error")


def log_sweep(report: SweepReport) -> None:
    """One log event per canary that moved, was skipped or failed (holds are only counted)."""
    for item in report.items:
        fields: dict[str, Any] = {
            "tenant": item.tenant,
            "version": item.version,
            "action": item.action,
            "traffic": item.traffic_percent,
            "reason": item.reason,
        }
        if item.applied:
            event(log, "canary.applied", **fields)
        elif item.skipped:
            event(log, "canary.skipped", **fields, skipped=item.skipped)
        elif item.error or item.action == "error":
            event(log, "canary.error", logging.WARNING, **fields, error=item.error)
    for tenant, numbers in report.archived.items():
        event(log, "versions.archived", tenant=tenant, versions=numbers)
    for tenant, error in report.retention_errors.items():
        event(log, "retention.error", logging.WARNING, tenant=tenant, error=error)
    event(
        log,
        "sweep.done",
        logging.DEBUG,
        canaries=report.canaries,
        seconds=round(report.duration_seconds, 4),
    )
