"""Notification metrics (served with the others by `worker.metrics.start_server`):

- `ftdeploy_notification_deliveries_total{outcome}`: attempts by outcome (delivered, retry,
  failed, gone);
- `ftdeploy_notification_endpoints_disabled_total{reason}`: endpoints disabled (gone, failing);
- `ftdeploy_notification_undelivered{endpoint,tenant}` and
  `ftdeploy_notification_oldest_undelivered_seconds{endpoint,tenant}` (gauges), and
  `ftdeploy_notification_endpoint_enabled{endpoint,tenant}`: read from the database at scrape
  time, exact across processes. `tenant` is the endpoint's tenant's slug, empty for a global
  endpoint: a name is unique only per owner.

Built lazily on first use, as `worker.metrics` explains (multiprocess mode).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client import Counter
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("ftdeploy.metrics")
_lock = threading.Lock()
_counters: dict[str, Counter] = {}
LABELS = ["endpoint", "tenant"]  # of the backlog gauges


def _counter(name: str, text: str, label: str) -> Counter:
    with _lock:
        if name not in _counters:
            from prometheus_client import Counter

            _counters[name] = Counter(name, text, [label])
        return _counters[name]


def delivery(outcome: str) -> None:
    _counter(
        "ftdeploy_notification_deliveries", "Notification delivery attempts, by outcome.", "outcome"
    ).labels(outcome=outcome).inc()


def endpoint_disabled(reason: str) -> None:
    _counter(
        "ftdeploy_notification_endpoints_disabled",
        "Notification endpoints disabled, by reason.",
        "reason",
    ).labels(reason=reason).inc()


class BacklogCollector:
    """Per endpoint: undelivered count, age of the oldest undelivered, enabled (0/1)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._engine: Any = None

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session
        from sqlalchemy.pool import NullPool

        from registry import clock
        from registry.notify.delivery import backlog

        try:
            if self._engine is None:
                self._engine = create_engine(self._url, poolclass=NullPool)
            with Session(self._engine) as session:
                rows = backlog(session, clock.now())
        except Exception as error:  # a scrape must not fail because the database is away
            log.warning(
                "metrics.notifications_unavailable",
                extra={"ftdeploy_fields": {"error": type(error).__name__}},
            )
            return
        pending = GaugeMetricFamily(
            "ftdeploy_notification_undelivered", "Undelivered notifications.", labels=LABELS
        )
        oldest = GaugeMetricFamily(
            "ftdeploy_notification_oldest_undelivered_seconds",
            "Age of the oldest undelivered notification.",
            labels=LABELS,
        )
        enabled = GaugeMetricFamily(
            "ftdeploy_notification_endpoint_enabled",
            "Whether the endpoint is enabled (1) or disabled (0).",
            labels=LABELS,
        )
        for name, tenant, is_enabled, count, age in rows:
            labels = [name, tenant or ""]
            pending.add_metric(labels, count)
            oldest.add_metric(labels, age)
            enabled.add_metric(labels, 1 if is_enabled else 0)
        yield pending
        yield oldest
        yield enabled
