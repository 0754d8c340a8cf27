"""Which model serves a request: `resolve(tenant, subject=None)`.

Called on every request of the serving app, so it answers from a per-process snapshot of each
tenant's split, not from the database (the seed ran one query per call, ~150 µs; a snapshot pick
costs well under 1 µs).

Guarantees:

- **Bounded staleness.** A snapshot is served for at most `staleness` seconds (default
  `FTDEPLOY_ROUTING_STALENESS_SECONDS`, 1 s) counted from the moment its read began; then the
  next call re-reads the split. A change committed by another process is therefore seen within
  the bound (plus the duration of one read).
- **Read your own writes.** When this process commits a change of a tenant's traffic
  (`versions.check_and_audit` registers `forget_tenant` with `registry.db.after_commit`), every
  Router in the process drops that tenant's snapshot right after the commit: the next call sees
  the change. A read that was already under way when the commit landed is used for its own call
  but not kept.
- **A clear "no model".** A tenant with nothing in production resolves to None. An unknown tenant
  raises TenantNotFound (a malformed name InvalidInput); a broken split (not summing to 100)
  raises InvariantViolation rather than guessing as the seed did. Database errors propagate.
- **Sticky subjects.** With a subject (user id, session id), the pick is weighted rendezvous
  hashing: each production version scores the subject as u ** (1 / weight), u a stable
  per-(subject, version) number in (0, 1), and the highest score wins. The same subject gets the
  same version while the split is unchanged, in every process and every Python version; when a
  canary grows and the others shrink in proportion, the others' scores keep their order, so a
  subject either stays or moves to the canary. Each version's share of subjects is its weight.
- **Without a subject** the pick is a weighted random draw per request.

A refresh that finds the split unchanged keeps the snapshot object, and with it the memo of
subjects already placed, so a steady split costs one small query per tenant per `staleness`.
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, sessionmaker

from registry.errors import InvariantViolation, TenantNotFound
from registry.models import ModelVersion, Tenant, VersionStatus
from registry.tenants import _as_uuid, validate_slug

# A Mersenne prime: the modulus of the per-version universal hash (below).
PRIME = (1 << 61) - 1
_INVERSE_PRIME = 1.0 / PRIME
# Placed subjects remembered per snapshot; past this the memo starts over (bounded memory).
STICKY_MEMO_LIMIT = 100_000
# Unknown tenant names remembered (within the staleness bound) so a flood of them cannot turn
# every request into a query; bounded the same way.
MISSING_MEMO_LIMIT = 10_000
_PERSON = b"ftdeploy-route"  # domain separation: these hashes mean nothing elsewhere

# (version id, version number, model id, traffic percent) of one production version.
VersionRow = tuple[uuid.UUID, int, str, int]


def subject_number(subject: str) -> int:
    """The subject as a number modulo PRIME: its UTF-8 bytes read as an integer. The same in
    every process and every Python version (Python's own hash() of a string is not)."""
    return int.from_bytes(subject.encode(), "little") % PRIME


def version_key(version_id: uuid.UUID, weight: int) -> tuple[int, int, float]:
    """The version's (a, b, 1 / weight) for the per-(subject, version) number u.

    u = ((a * m + b) mod PRIME + 0.5) / PRIME, m the subject's number: a Carter-Wegman universal
    hash with (a, b) drawn from the version's id. For a fixed version, m -> u spreads subjects
    evenly over (0, 1) (a Weyl sequence for consecutive ids); for two versions the pairs of
    numbers fall on a fine lattice, so they are as good as independent. Pure integer arithmetic,
    one multiplication per version: a subject seen for the first time costs about a microsecond
    or two, no hashing library call per subject.
    """
    digest = blake2b(version_id.bytes, digest_size=16, person=_PERSON).digest()
    a = int.from_bytes(digest[:8], "little") % (PRIME - 1) + 1
    b = int.from_bytes(digest[8:], "little") % PRIME
    return a, b, 1.0 / weight


@dataclass(slots=True, eq=False)
class Snapshot:
    """One tenant's production split as of `loaded_at`, ready for picks."""

    tenant_id: uuid.UUID
    loaded_at: float
    expires: float = math.inf
    signature: tuple[VersionRow, ...] = ()
    model_ids: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    shares: tuple[int, ...] = ()
    # The only model when one version serves everything (the common case), else None.
    only: str | None = None
    # 100 entries, each model id repeated by its share: a draw is one index.
    table: tuple[str, ...] = ()
    keys: tuple[tuple[int, int, float], ...] = ()
    sticky: dict[str, str] = field(default_factory=dict)

    def pick(self, subject: str | None = None) -> str | None:
        """The model for one request: None when nothing is in production."""
        if self.only is not None or not self.model_ids:
            return self.only
        if subject is None:
            return self.table[int(random.random() * 100)]
        chosen = self.sticky.get(subject)
        if chosen is None:
            chosen = self.place(subject)
            if len(self.sticky) >= STICKY_MEMO_LIMIT:
                self.sticky.clear()
            self.sticky[subject] = chosen
        return chosen

    def place(self, subject: str) -> str:
        """Rendezvous: the version with the highest u ** (1 / weight) (compared as logs)."""
        text = subject if isinstance(subject, str) else str(subject)
        m = int.from_bytes(text.encode(), "little") % PRIME  # subject_number(), inlined
        best, best_score = self.model_ids[0], -math.inf
        log = math.log
        for (a, b, inverse_weight), model_id in zip(self.keys, self.model_ids, strict=True):
            # u in (0, 1] (never 0: the log is finite); log(u) / w orders like u ** (1 / w).
            score = log(((a * m + b) % PRIME + 0.5) * _INVERSE_PRIME) * inverse_weight
            if score > best_score:
                best, best_score = model_id, score
        return best


def build_snapshot(
    tenant_id: uuid.UUID, rows: Sequence[VersionRow], loaded_at: float, expires: float = math.inf
) -> Snapshot:
    """A snapshot from (version id, version, model id, traffic) rows of production versions.

    Raises InvariantViolation when the shares do not sum to 100 (the database's invariant is
    broken): a broken split is an error, not a guess (the seed quietly served versions[0]).
    """
    signature = _signature(rows)
    if signature and sum(r[3] for r in signature) != 100:
        raise InvariantViolation(str(tenant_id), {r[1]: r[3] for r in signature})
    model_ids = tuple(r[2] for r in signature)
    return Snapshot(
        tenant_id=tenant_id,
        loaded_at=loaded_at,
        expires=expires,
        signature=signature,
        model_ids=model_ids,
        versions=tuple(r[1] for r in signature),
        shares=tuple(r[3] for r in signature),
        only=model_ids[0] if len(model_ids) == 1 else None,
        table=tuple(r[2] for r in signature for _ in range(r[3])),
        keys=tuple(version_key(r[0], r[3]) for r in signature),
    )


def _signature(rows: Sequence[VersionRow]) -> tuple[VersionRow, ...]:
    return tuple(sorted((tuple(r) for r in rows if r[3] > 0), key=lambda r: r[1]))  # type: ignore[misc]


class Router:
    """Per-process snapshots of tenants' splits, refreshed after `staleness` seconds.

    Thread-safe. Tenants are named by slug or id; each name has its own snapshot.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        staleness: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not staleness >= 0:  # also refuses NaN
            raise ValueError(f"staleness must be >= 0 seconds, got {staleness!r}")
        self._sessions = sessions
        self._staleness = float(staleness)
        self._clock = clock
        self._snapshots: dict[str, Snapshot] = {}
        self._missing: dict[str, float] = {}  # unknown name -> until when it is known unknown
        self._generation = 0  # bumped by every invalidation: reads that overlap one are not kept
        self._lock = threading.Lock()
        self.reads = 0  # database reads made, for tests and benchmarks
        _ROUTERS.add(self)

    @property
    def staleness(self) -> float:
        return self._staleness

    def resolve(self, tenant: str, subject: str | None = None) -> str | None:
        """The model id for this request, or None when the tenant has nothing in production.

        Raises TenantNotFound (InvalidInput for a malformed name), InvariantViolation, or the
        database's error when a refresh is due and the database cannot be read.
        """
        snapshot = self._snapshots.get(tenant)
        if snapshot is None or self._clock() >= snapshot.expires:
            snapshot = self._refresh(tenant)
        return snapshot.pick(subject)

    def snapshot(self, tenant: str) -> Snapshot:
        """The tenant's current snapshot (refreshed first if due)."""
        snapshot = self._snapshots.get(tenant)
        if snapshot is None or self._clock() >= snapshot.expires:
            snapshot = self._refresh(tenant)
        return snapshot

    def invalidate(self, tenant_ids: set[uuid.UUID] | None = None) -> None:
        """Drop the snapshots of these tenants (all when None): their next call re-reads."""
        with self._lock:
            self._generation += 1
            self._missing.clear()
            if tenant_ids is None:
                self._snapshots.clear()
                return
            for key in [k for k, s in self._snapshots.items() if s.tenant_id in tenant_ids]:
                self._snapshots.pop(key, None)

    def _refresh(self, tenant: str) -> Snapshot:
        now = self._clock()
        unknown_until = self._missing.get(tenant)
        if unknown_until is not None and now < unknown_until:
            raise TenantNotFound(tenant)
        generation = self._generation
        expires = now + self._staleness
        try:
            tenant_id, rows = self._read(tenant)
        except TenantNotFound:
            with self._lock:
                if generation == self._generation:
                    if len(self._missing) >= MISSING_MEMO_LIMIT:
                        self._missing.clear()
                    self._missing[tenant] = expires
            raise
        previous = self._snapshots.get(tenant)
        if previous is not None and previous.signature == _signature(rows):
            # Same split: keep the snapshot and its memo of placed subjects.
            snapshot = previous
        else:
            snapshot = build_snapshot(tenant_id, rows, now, expires)
        with self._lock:
            if generation == self._generation:
                snapshot.loaded_at, snapshot.expires = now, expires
                self._snapshots[tenant] = snapshot
            elif snapshot is previous:
                # An invalidation overlapped the read: answer this call, keep nothing.
                snapshot = build_snapshot(tenant_id, rows, now, now)
        return snapshot

    def _read(self, tenant: str) -> tuple[uuid.UUID, list[VersionRow]]:
        """The tenant's id and production rows, in one query. Raises TenantNotFound."""
        if isinstance(tenant, uuid.UUID):  # an id object names the tenant as well as its text
            tenant = str(tenant)
        tenant_id = _as_uuid(tenant)
        condition = Tenant.id == tenant_id if tenant_id else Tenant.slug == validate_slug(tenant)
        statement = (
            select(
                Tenant.id,
                ModelVersion.id,
                ModelVersion.version,
                ModelVersion.model_id,
                ModelVersion.traffic_percent,
            )
            .select_from(Tenant)
            .outerjoin(
                ModelVersion,
                and_(
                    ModelVersion.tenant_id == Tenant.id,
                    ModelVersion.status == VersionStatus.PRODUCTION,
                ),
            )
            .where(condition)
        )
        with self._sessions() as session:
            found = session.execute(statement).all()
        self.reads += 1
        if not found:
            raise TenantNotFound(tenant)
        # Outer join: a tenant with nothing in production comes back as one row of NULLs.
        rows: list[VersionRow] = [
            (version_id, number, model_id, percent)
            for _, version_id, number, model_id, percent in found
            if version_id is not None
        ]
        return found[0][0], rows


_ROUTERS: weakref.WeakSet[Router] = weakref.WeakSet()


# -- the serving app's entry point ---------------------------------------------------------------

_default_router: Router | None = None
_default_lock = threading.Lock()


def default_router() -> Router:
    """The process's Router over the configured database, with the configured staleness
    (`FTDEPLOY_DATABASE_URL`, `FTDEPLOY_ROUTING_STALENESS_SECONDS`). Built at the first call."""
    global _default_router
    router = _default_router
    if router is None:
        with _default_lock:
            if _default_router is None:
                from registry.db import session_factory
                from registry.settings import get_settings

                _default_router = Router(
                    session_factory(), staleness=get_settings().routing_staleness_seconds
                )
            router = _default_router
    return router


def reset_default_router() -> None:
    """Forget the default Router (after a change of settings, say); the next call builds one."""
    global _default_router
    with _default_lock:
        _default_router = None


def resolve(tenant: str, subject: str | None = None) -> str | None:
    """The model id the serving app should use for this request: `registry.routing.resolve`.

    None when the tenant has nothing in production ("no model"); sticky per subject; answered from
    the process's snapshot, at most `FTDEPLOY_ROUTING_STALENESS_SECONDS` old, and fresh after a
    change committed by this process. Raises TenantNotFound / InvalidInput for a bad tenant.
    """
    return default_router().resolve(tenant, subject)


# -- invalidation after this process's own commits -----------------------------------------------


def forget_tenant(tenant_id: uuid.UUID) -> None:
    """Drop the tenant's snapshot from every Router of this process: the next call reads the
    split afresh. `versions.check_and_audit` registers this to run after the change commits."""
    for router in list(_ROUTERS):
        router.invalidate({tenant_id})
