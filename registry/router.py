"""The Router: per-process snapshots of tenants' splits, kept fresh by the change feed.

`registry.routing` is its entry point (`resolve`, the default Router, `forget_tenant`) and
documents its guarantees; this module holds the class and how it keeps them: the fast path of a
call (the flat memo of placed subjects), the feed's invalidations, the reads and the outages.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from registry import validation
from registry.change_feed import ChangeBatch, ChangeFeed
from registry.errors import RoutingUnavailable, TenantNotFound
from registry.models import ModelVersion, RoutingGeneration, Tenant, in_production
from registry.routing_outage import Outage
from registry.snapshots import Memos, Snapshot, VersionRow, build_snapshot, signature_of

log = logging.getLogger("ftdeploy.routing")

# Invalidations remembered for the reads under way (a read overlapping more is not kept).
LEARNED_LOG = 1024


class Router:
    """Per-process snapshots of tenants' splits, kept fresh by a change feed (or, without one,
    re-read after `staleness` seconds). Thread-safe. Tenants are named by slug or id."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        staleness: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        feed: ChangeFeed | None = None,
        max_stale: float | None = None,
        subject_memo_bytes: int = 64 << 20,
        name_memo_bytes: int = 4 << 20,
        snapshot_memo_bytes: int = 64 << 20,
    ) -> None:
        if not staleness >= 0:  # also refuses NaN
            raise ValueError(f"staleness must be >= 0 seconds, got {staleness!r}")
        self._sessions = sessions
        self._staleness = float(staleness)
        self._clock = clock
        self._max_stale = math.inf if max_stale is None else float(max_stale)
        self._memos = Memos(subject_memo_bytes, name_memo_bytes, snapshot_memo_bytes)
        # The memos' dicts, looked up without the lock on the fast path.
        self._snapshots = self._memos.snapshots  # tenant id -> snapshot
        self._aliases = self._memos.aliases  # a name, as called -> the tenant's id
        self._by_name = self._memos.by_name  # a name in aliases -> the snapshot served for it
        self._missing = self._memos.missing  # unknown name -> until when it is known unknown
        # Bumped by every invalidation, which is logged: a read that overlaps one for its tenant
        # (newer than what it found) is used for its call but not kept.
        self._generation = 0
        self._learned: deque[tuple[int, uuid.UUID | None, float]] = deque(maxlen=LEARNED_LOG)
        self._learned.append((0, None, 0.0))
        # Reentrant: the subject budget's spill (below) takes it, and may run inside it.
        self._lock = threading.RLock()
        # Placed subjects of split tenants, one flat memo for the whole Router (`Memos.placed`):
        # a hot call is one lookup there and a check of the feed's vouch, not a walk through
        # per-tenant objects scattered in memory (that walk made 10,000 tenants cost several
        # times 10). An entry stands for its tenant's current snapshot: it goes whenever that
        # snapshot is marked stale or replaced. Only with a feed: without one, validity is per
        # snapshot, and the snapshot's own memo serves. A spill (under the lock) empties both.
        self._placed = self._memos.placed
        self._memos.budget.spill = self._spill_subjects
        self._outage = Outage()
        # (the feed's vouched_at, the expiry it grants): see `_extend`.
        self._lease: tuple[float, float] = (-math.inf, -math.inf)
        self.reads = 0  # database reads made, for tests and benchmarks
        self._feed = feed
        self._vouching: ChangeFeed | _NoFeed = feed if feed is not None else _NoFeed()
        self._unsubscribe = feed.subscribe(self._on_changes) if feed is not None else None
        ROUTERS.add(self)

    @property
    def staleness(self) -> float:
        return self._staleness

    @property
    def feed(self) -> ChangeFeed | None:
        return self._feed

    def resolve(self, tenant: str, subject: str | None = None) -> str | None:
        """The model id for this request, or None when the tenant has nothing in production.

        Raises TenantNotFound (InvalidInput for a malformed name), InvariantViolation, or
        RoutingUnavailable when the database cannot be read and no usable split is known.
        """
        if subject is not None:
            model = self._placed.get((tenant, subject))
            # Placed on the tenant's current split, which the feed vouches for (see _extend).
            if model is not None and self._clock() < self._vouching.vouched_at + self._staleness:
                return model
        snapshot = self._by_name.get(tenant)
        if snapshot is None or not (
            # Within its bound, or untouched while the feed vouches for the changes since.
            (now := self._clock()) < snapshot.expires or self._extend(snapshot, now)
        ):
            snapshot = self._current(tenant)
        if subject is None or snapshot.only is not None or self._feed is None:
            return snapshot.pick(subject)
        return self._place(tenant, subject, snapshot)

    def snapshot(self, tenant: str) -> Snapshot:
        """The tenant's current snapshot (refreshed first if due)."""
        snapshot = self._by_name.get(tenant)
        if snapshot is not None and self._clock() < snapshot.expires:
            return snapshot
        return self._current(tenant)

    def invalidate(self, tenant_ids: Iterable[uuid.UUID] | None = None) -> None:
        """Mark these tenants' snapshots stale (all when None): their next call re-reads. A
        mapping tenant id -> generation spares snapshots already read at that generation."""
        with self._lock:
            self._memos.forget("missing")
            self._mark(tenant_ids)

    def close(self) -> None:
        """Stop listening to the feed (the snapshots stay, no longer kept fresh by it)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- the feed ----------------------------------------------------------------------------

    def _on_changes(self, batch: ChangeBatch) -> None:
        with self._lock:
            if batch.resync:
                self._memos.forget("missing")
                self._mark(None)
            else:
                self._mark(batch.tenants)

    def _mark(self, tenant_ids: Iterable[uuid.UUID] | None) -> None:
        """Mark snapshots stale and log what was learned, for the reads under way (locked)."""
        self._generation += 1
        if tenant_ids is None:
            self._learned.append((self._generation, None, math.inf))
            for snapshot in self._snapshots.values():
                snapshot.current, snapshot.expires = False, -math.inf
            self._memos.forget_placed(None)
            return
        generations = tenant_ids if isinstance(tenant_ids, Mapping) else {}
        for tenant_id in tenant_ids:
            generation = generations.get(tenant_id, math.inf)
            self._learned.append((self._generation, tenant_id, generation))
            held = self._snapshots.get(tenant_id)
            if held is None or held.generation < generation:
                # Also without a snapshot: one evicted may have left placed subjects.
                self._memos.forget_placed(tenant_id)
                if held is not None:
                    held.current, held.expires = False, -math.inf

    def _overtaken(self, since: int, tenant_id: uuid.UUID, generation: int) -> bool:
        """Whether a read that began at `since` and found `generation` missed a change learned
        meanwhile (locked). A change it already saw (own commit, then the feed's notice of the
        same change) does not count."""
        if since == self._generation:
            return False
        if self._learned[0][0] > since:  # the log no longer reaches back to the read's start
            return True
        for counter, learned_id, learned_generation in reversed(self._learned):
            if counter <= since:
                return False
            if learned_id is None or (learned_id == tenant_id and learned_generation > generation):
                return True
        return False

    def _extend(self, snapshot: Snapshot, now: float) -> bool:
        """Keep serving an untouched snapshot while the feed vouches for the changes since."""
        vouched = self._feed.vouched_at if self._feed is not None else -math.inf
        if not snapshot.current or vouched + self._staleness <= now:
            return False
        lease = self._lease
        if lease[0] != vouched:
            # One float object per vouched moment, shared by every snapshot it extends: a call
            # compares against an object already in the CPU's cache, not one per tenant.
            lease = self._lease = (vouched, vouched + self._staleness)
        with self._lock:
            if not snapshot.current:  # a change was learned meanwhile
                return False
            if snapshot.verified_at < vouched:
                snapshot.verified_at = vouched
            snapshot.expires = lease[1]
        return True

    # -- placed subjects ---------------------------------------------------------------------

    def _place(self, tenant: Any, subject: str, snapshot: Snapshot) -> str | None:
        """The subject's model on a split of several versions (or none), remembered in the flat
        memo while `snapshot` is its tenant's current one."""
        key = (tenant, subject)
        # Entries stand for the tenant's current snapshot only (dropped when it is replaced or
        # marked stale), and `snapshot` was just found current: a hit needs no lock.
        model = self._placed.get(key) if snapshot.current else None
        if model is not None:
            return model
        if not snapshot.model_ids:
            return None
        model = snapshot.place(subject)
        if not snapshot.current or type(subject) is not str or tenant not in self._aliases:
            return model
        with self._lock:
            # Checked again: a change learned meanwhile must not leave an entry behind.
            if self._snapshots.get(snapshot.tenant_id) is snapshot and snapshot.current:
                self._memos.place(key, snapshot.tenant_id, model)
        return model

    def _spill_subjects(self) -> None:
        """The subject budget is spent: every memo of placed subjects starts over."""
        with self._lock:
            self._memos.spill_subjects()

    # -- reading -----------------------------------------------------------------------------

    def _current(self, tenant: Any) -> Snapshot:
        snapshot = self._current_of(tenant)
        if tenant in self._aliases:
            self._by_name[tenant] = snapshot
        return snapshot

    def _current_of(self, tenant: Any) -> Snapshot:
        now = self._clock()
        tenant_id = self._canonical(tenant)
        snapshot = self._snapshots.get(tenant_id) if tenant_id is not None else None
        if snapshot is not None and (now < snapshot.expires or self._extend(snapshot, now)):
            return snapshot
        unknown_until = self._missing.get(tenant if tenant_id is None else tenant_id)
        if unknown_until is not None and now < unknown_until:
            raise TenantNotFound(str(tenant))
        return self._refresh(tenant, tenant_id, snapshot, now)

    def _canonical(self, tenant: Any) -> uuid.UUID | None:
        """The tenant's id, if the name tells it (an id in any spelling, or a slug read before);
        None for a slug not read yet. Raises InvalidInput for a malformed name."""
        tenant_id = self._aliases.get(tenant)
        if tenant_id is not None:
            return tenant_id
        tenant_id = tenant if isinstance(tenant, uuid.UUID) else validation.as_uuid(tenant)
        if tenant_id is None:
            validation.tenant_slug(tenant)
            return None
        with self._lock:
            self._memos.remember("aliases", tenant, tenant_id)
        return tenant_id

    def _refresh(
        self, tenant: Any, tenant_id: uuid.UUID | None, previous: Snapshot | None, now: float
    ) -> Snapshot:
        if not self._outage.may_try(now):  # one call at a time tries the database again
            return self._last_known(tenant, tenant_id, previous, now, "database unavailable")
        generation = self._generation
        try:
            found_id, slug, tenant_generation, rows = self._read(tenant, tenant_id)
        except TenantNotFound:
            self._recovered(now)
            with self._lock:
                if generation == self._generation:
                    self._memos.remember("missing", tenant if tenant_id is None else tenant_id,
                                   now + self._staleness)  # fmt: skip
                if tenant_id is not None:
                    self._memos.drop(tenant_id)
                    self._memos.forget_placed(tenant_id)
            raise
        except SQLAlchemyError as error:
            self._outage.failed(error, now)
            return self._last_known(tenant, tenant_id, previous, now, type(error).__name__)
        self._recovered(now)
        if previous is not None and previous.signature == signature_of(rows):
            snapshot = previous  # same split: keep the snapshot and its memos of placed subjects
        else:
            snapshot = build_snapshot(found_id, rows, now, now + self._staleness,
                                      slug=slug, budget=self._memos.budget)  # fmt: skip
        with self._lock:
            if self._overtaken(generation, found_id, tenant_generation):
                # A change was learned while we read: answer this call, keep nothing.
                return build_snapshot(found_id, rows, now, now, slug=slug)
            snapshot.loaded_at = snapshot.verified_at = now
            snapshot.expires, snapshot.generation = now + self._staleness, tenant_generation
            snapshot.current = True
            if snapshot is not previous:  # another split, or the first read: its own subjects
                self._memos.forget_placed(found_id)
            self._memos.store(snapshot, previous)
            self._memos.remember("aliases", tenant, found_id)
            self._memos.remember("aliases", slug, found_id)
        return snapshot

    def _read(
        self, tenant: Any, tenant_id: uuid.UUID | None
    ) -> tuple[uuid.UUID, str, int, list[VersionRow]]:
        """The tenant's id, slug, generation and production rows, in one query."""
        condition = Tenant.id == tenant_id if tenant_id is not None else Tenant.slug == tenant
        statement = (
            select(
                Tenant.id,
                Tenant.slug,
                RoutingGeneration.generation,
                ModelVersion.id,
                ModelVersion.version,
                ModelVersion.model_id,
                ModelVersion.traffic_percent,
            )
            .select_from(Tenant)
            .outerjoin(RoutingGeneration, RoutingGeneration.tenant_id == Tenant.id)
            .outerjoin(
                ModelVersion,
                and_(
                    ModelVersion.tenant_id == Tenant.id,
                    in_production(ModelVersion.status),
                ),
            )
            .where(condition)
        )
        with self._sessions() as session:
            found = session.execute(statement).all()
        self.reads += 1
        if not found:
            raise TenantNotFound(str(tenant))
        # Outer join: a tenant with nothing in production comes back as one row of NULLs.
        rows: list[VersionRow] = [
            (version_id, number, model_id, percent)
            for *_, version_id, number, model_id, percent in found
            if version_id is not None
        ]
        return found[0][0], found[0][1], int(found[0][2] or 0), rows

    @property
    def memo_bytes(self) -> dict[str, int]:
        """Bytes held by each memo (estimates), for tests and monitoring."""
        return self._memos.sizes

    # -- outages -----------------------------------------------------------------------------

    def _last_known(
        self, tenant: Any, tenant_id: uuid.UUID | None, previous: Snapshot | None, now: float,
        reason: str,
    ) -> Snapshot:  # fmt: skip
        if previous is None and tenant_id is None:  # its slug's alias may have been forgotten
            known = list(self._snapshots.values())
            previous = next((s for s in known if s.slug == tenant), None)
        if previous is None:
            raise RoutingUnavailable(str(tenant), f"{reason}, and its split was never read")
        verified_at = previous.verified_at
        if previous.current and self._feed is not None:
            # Calls answered from the flat memo leave verified_at behind: the split was still
            # known current when the feed last vouched.
            verified_at = max(verified_at, self._feed.vouched_at)
        age = now - verified_at
        if age > self._max_stale:
            raise RoutingUnavailable(
                str(tenant), f"{reason}, and its last known split is {age:.0f} s old"
            )
        with self._lock:  # served as it is until the next attempt
            retry_at = max(self._outage.retry_at, now)
            previous.verified_at = max(previous.verified_at, verified_at)
            previous.expires = min(retry_at, previous.verified_at + self._max_stale)
        self._outage.served(previous.tenant_id, previous.slug or str(tenant), age, reason)
        return previous

    def _recovered(self, now: float) -> None:
        if not self._outage.active:
            return
        served = self._outage.recovered(now)
        with self._lock:
            for tenant_id in served:  # re-read at their next call, not at their retry time
                if (snapshot := self._snapshots.get(tenant_id)) is not None:
                    snapshot.expires = -math.inf


class _NoFeed:
    """What a Router without a feed reads for its vouch: never."""

    vouched_at = -math.inf


# Every Router of the process, for `registry.routing.forget_tenant`.
ROUTERS: weakref.WeakSet[Router] = weakref.WeakSet()
