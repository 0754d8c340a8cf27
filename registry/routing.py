"""Which model serves a request: `resolve(tenant, subject=None)`.

Called on every request of the serving app, so it answers from a per-process snapshot of each
tenant's split, not from the database. A snapshot is re-read once it is older than the staleness
bound (a change made by another process is seen within it) and dropped at once when this process
commits a change of that tenant's traffic.

With a subject (user id, session id), the pick is weighted rendezvous hashing: each production
version scores the subject as u ** (1 / weight), u a stable per-(subject, version) number in
(0, 1), and the highest score wins. The same subject gets the same version while the split is
unchanged, in every process; when a canary grows and the others shrink in proportion, the others'
scores keep their order, so a subject either stays or moves to the canary.
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
import weakref
import zlib
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from registry.errors import InvariantViolation, TenantNotFound
from registry.models import ModelVersion, Tenant, VersionStatus
from registry.tenants import _as_uuid, validate_slug

MASK64 = (1 << 64) - 1
STICKY_MEMO_LIMIT = 100_000
# Where a unit of work notes the tenants whose traffic it changed (see `versions.commit_change`).
CHANGED_TENANTS_KEY = "ftdeploy.changed_tenants"


def _mix64(x: int) -> int:
    """splitmix64's finalizer: spreads every input bit over the whole 64-bit word."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & MASK64
    return x ^ (x >> 31)


def subject_hash(subject: str) -> int:
    """A stable 64-bit hash of the subject (Python's hash() differs between processes)."""
    data = subject.encode()
    return _mix64(zlib.crc32(data) | (zlib.adler32(data) << 32))


@dataclass(slots=True)
class Snapshot:
    """One tenant's production split as of `loaded_at`, ready for picks."""

    tenant_id: uuid.UUID
    loaded_at: float
    model_ids: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    cumulative: tuple[int, ...] = ()
    seeds: tuple[int, ...] = ()
    inverse_weights: tuple[float, ...] = ()
    sticky: dict[str, str] = field(default_factory=dict)

    def pick(self, subject: str | None) -> str | None:
        if not self.model_ids:
            return None
        if len(self.model_ids) == 1:
            return self.model_ids[0]
        if subject is None:
            return self.model_ids[bisect_right(self.cumulative, random.random() * 100)]
        chosen = self.sticky.get(subject)
        if chosen is None:
            chosen = self._rendezvous(subject)
            if len(self.sticky) >= STICKY_MEMO_LIMIT:
                self.sticky.clear()
            self.sticky[subject] = chosen
        return chosen

    def _rendezvous(self, subject: str) -> str:
        h = subject_hash(subject)
        best_index, best_score = 0, -math.inf
        for index, seed in enumerate(self.seeds):
            x = _mix64(h ^ seed)
            # u in (0, 1), never 0, so log is finite; log(u) / w orders like u ** (1 / w).
            score = math.log(((x >> 11) + 0.5) * 2.0**-53) * self.inverse_weights[index]
            if score > best_score:
                best_index, best_score = index, score
        return self.model_ids[best_index]


def build_snapshot(
    tenant_id: uuid.UUID, rows: list[tuple[uuid.UUID, int, str, int]], loaded_at: float
) -> Snapshot:
    """A snapshot from (version id, version, model id, traffic) rows of production versions."""
    rows = sorted((r for r in rows if r[3] > 0), key=lambda r: r[1])
    if rows and sum(r[3] for r in rows) != 100:
        # The seed quietly served versions[0] here; a broken split is an error, not a guess.
        raise InvariantViolation(str(tenant_id), {r[1]: r[3] for r in rows})
    # Upper bounds of each version's range in [0, 100), the last one implied.
    bounds, total = [], 0
    for row in rows[:-1]:
        total += row[3]
        bounds.append(total)
    return Snapshot(
        tenant_id=tenant_id,
        loaded_at=loaded_at,
        model_ids=tuple(r[2] for r in rows),
        versions=tuple(r[1] for r in rows),
        cumulative=tuple(bounds),
        seeds=tuple(_mix64(r[0].int & MASK64) for r in rows),
        inverse_weights=tuple(1.0 / r[3] for r in rows),
    )


class Router:
    """Per-process snapshots of tenants' splits, refreshed after `staleness` seconds."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        staleness: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._staleness = staleness
        self._clock = clock
        self._snapshots: dict[str, Snapshot] = {}
        self._lock = threading.Lock()
        _ROUTERS.add(self)

    def resolve(self, tenant: str, subject: str | None = None) -> str | None:
        """The model id for this request, or None when the tenant has nothing in production.

        Raises TenantNotFound (or InvalidInput for a malformed name). Sticky per subject.
        """
        snapshot = self._snapshots.get(tenant)
        if snapshot is None or self._clock() - snapshot.loaded_at > self._staleness:
            snapshot = self._load(tenant)
        return snapshot.pick(subject)

    def snapshot(self, tenant: str) -> Snapshot:
        snapshot = self._snapshots.get(tenant)
        if snapshot is None or self._clock() - snapshot.loaded_at > self._staleness:
            snapshot = self._load(tenant)
        return snapshot

    def invalidate(self, tenant_ids: set[uuid.UUID] | None = None) -> None:
        with self._lock:
            if tenant_ids is None:
                self._snapshots.clear()
                return
            for key in [k for k, s in self._snapshots.items() if s.tenant_id in tenant_ids]:
                self._snapshots.pop(key, None)

    def _load(self, tenant: str) -> Snapshot:
        tenant_id = _as_uuid(tenant)
        condition = Tenant.id == tenant_id if tenant_id else Tenant.slug == validate_slug(tenant)
        loaded_at = self._clock()
        with self._sessions() as session:
            found = session.scalar(select(Tenant.id).where(condition))
            if found is None:
                raise TenantNotFound(tenant)
            rows = session.execute(
                select(
                    ModelVersion.id,
                    ModelVersion.version,
                    ModelVersion.model_id,
                    ModelVersion.traffic_percent,
                ).where(
                    ModelVersion.tenant_id == found,
                    ModelVersion.status == VersionStatus.PRODUCTION,
                )
            ).all()
        snapshot = build_snapshot(found, [tuple(r) for r in rows], loaded_at)  # type: ignore[misc]
        with self._lock:
            self._snapshots[tenant] = snapshot
        return snapshot


_ROUTERS: weakref.WeakSet[Router] = weakref.WeakSet()


def _drop_changed_snapshots(session: Session) -> None:
    changed = session.info.pop(CHANGED_TENANTS_KEY, None)
    if changed:
        for router in list(_ROUTERS):
            router.invalidate(changed)


def _forget_changes(session: Session) -> None:
    session.info.pop(CHANGED_TENANTS_KEY, None)


event.listen(Session, "after_commit", _drop_changed_snapshots)
event.listen(Session, "after_rollback", _forget_changes)
