"""What a Router does while its database cannot be read: back off, log once, report staleness.

An outage starts at the first failed read and ends at the first read that succeeds. Meanwhile
only one call at a time, after a backoff (0.05 s doubling to 5 s), tries the database again;
the others are answered from the last known splits. Each tenant served that way is logged once
per outage (`routing.serving_last_known`), the outage's start and end once each; the gauges
`ftdeploy_routing_stale_tenants` and `ftdeploy_routing_stale_age_seconds` show how many tenants
are served from the past, and how old the oldest split served is.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid

from registry.change_feed import RETRY_MAX_SECONDS, RETRY_MIN_SECONDS

log = logging.getLogger("ftdeploy.routing")


class Outage:
    """One Router's outage state. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None
        self.retry_at = -math.inf
        self._backoff = RETRY_MIN_SECONDS
        self._served: set[uuid.UUID] = set()

    @property
    def active(self) -> bool:
        return self.since is not None

    def may_try(self, now: float) -> bool:
        """Whether this call may try the database (it then holds the attempt until the next
        backoff ends)."""
        with self._lock:
            if self.since is None:
                return True
            if now < self.retry_at:
                return False
            self.retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, RETRY_MAX_SECONDS)
            return True

    def failed(self, error: Exception, now: float) -> None:
        with self._lock:
            first = self.since is None
            if first:
                self.since, self.retry_at = now, now + RETRY_MIN_SECONDS
                self._backoff = RETRY_MIN_SECONDS * 2
        if first:
            fields = {"error": type(error).__name__, "detail": str(error).strip()[:200]}
            log.warning("routing.database_unavailable", extra={"ftdeploy_fields": fields})

    def served(self, tenant_id: uuid.UUID, name: str, age: float, reason: str) -> None:
        """A last known split was served for this tenant (logged once per outage)."""
        with self._lock:
            first = tenant_id not in self._served
            self._served.add(tenant_id)
            count = len(self._served)
        if first:
            fields = {"tenant": name, "age_seconds": round(age, 3), "reason": reason}
            log.warning("routing.serving_last_known", extra={"ftdeploy_fields": fields})
        _metrics().stale(count, age)

    def recovered(self, now: float) -> list[uuid.UUID]:
        """End the outage (if any); returns the tenants served from the past meanwhile."""
        if self.since is None:
            return []
        with self._lock:
            if self.since is None:
                return []
            duration, self.since = now - self.since, None
            self.retry_at, self._backoff = -math.inf, RETRY_MIN_SECONDS
            served, self._served = list(self._served), set()
        fields = {"outage_seconds": round(duration, 3), "tenants_served_stale": len(served)}
        log.info("routing.database_recovered", extra={"ftdeploy_fields": fields})
        _metrics().stale(0, 0.0)
        return served


class _Metrics:
    """The routing gauges, built at first use (prometheus_client picks its storage then)."""

    def __init__(self) -> None:
        from prometheus_client import Gauge

        self.tenants = Gauge(
            "ftdeploy_routing_stale_tenants",
            "Tenants served their last known split because the database could not be read.",
        )
        self.age = Gauge(
            "ftdeploy_routing_stale_age_seconds",
            "Age of the oldest last known split served during the current database outage.",
        )
        self._oldest = 0.0

    def stale(self, tenants: int, age: float) -> None:
        self._oldest = 0.0 if tenants == 0 else max(self._oldest, age)
        self.tenants.set(tenants)
        self.age.set(self._oldest)


_metrics_instance: _Metrics | None = None
_metrics_lock = threading.Lock()


def _metrics() -> _Metrics:
    global _metrics_instance
    if _metrics_instance is None:
        with _metrics_lock:
            if _metrics_instance is None:
                _metrics_instance = _Metrics()
    return _metrics_instance
