"""One tenant's production split, ready for picks: `Snapshot`, `build_snapshot`.

The pick (the routing contract other clients reimplement; keep it byte for byte): with a subject,
weighted rendezvous hashing — each production version scores the subject as u ** (1 / weight),
u a stable per-(subject, version) number in (0, 1), and the highest score wins; without one, a
weighted random draw per request. See `registry.routing` for the guarantees.

Placed subjects are remembered per snapshot (a memo hit costs one dict lookup). Every memo of a
Router draws on one `MemoBudget` counted in bytes (the subject's size plus a dict entry), so long
subjects cannot grow memory past the budget: when it is spent, every memo starts over.
"""

from __future__ import annotations

import math
import random
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

from registry.errors import InvariantViolation

# A Mersenne prime: the modulus of the per-version universal hash (below).
PRIME = (1 << 61) - 1
_INVERSE_PRIME = 1.0 / PRIME
# Bytes a memo entry costs beyond its key's own size: the dict slot, the hash, the value pointer.
MEMO_ENTRY_BYTES = 64
# The budget of a snapshot built on its own (a Router passes one budget shared by all of its).
DEFAULT_MEMO_BYTES = 16 << 20
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


class MemoBudget:
    """Bytes that memos may hold together; `spill()` (all memos start over) when spent."""

    __slots__ = ("limit", "spill", "used")

    def __init__(self, limit: int, spill: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.spill = spill or self._reset

    def _reset(self) -> None:
        self.used = 0


@dataclass(slots=True, eq=False, kw_only=True)
class Snapshot:
    """One tenant's production split as of `loaded_at`, ready for picks."""

    # What every call reads comes first: slots are laid out in this order, so a call touches
    # one or two cache lines of the snapshot, not four (it matters with thousands of tenants).
    # The only model when one version serves everything (the common case), else None.
    only: str | None = None
    sticky: dict[str, str] = field(default_factory=dict)
    expires: float = math.inf
    # False once a change of the tenant is known: never served as current again, but still the
    # last known split if the database cannot be read.
    current: bool = True
    model_ids: tuple[str, ...] = ()
    tenant_id: uuid.UUID
    loaded_at: float
    # The tenant's routing generation when read, its slug, and the last moment the split was
    # known to be current (its read, or the change feed vouching since).
    generation: int = 0
    slug: str = ""
    verified_at: float = 0.0
    signature: tuple[VersionRow, ...] = ()
    versions: tuple[int, ...] = ()
    shares: tuple[int, ...] = ()
    # 100 entries, each model id repeated by its share: a draw is one index.
    table: tuple[str, ...] = ()
    keys: tuple[tuple[int, int, float], ...] = ()
    sticky_bytes: int = 0
    budget: MemoBudget | None = None

    def pick(self, subject: str | None = None) -> str | None:
        """The model for one request: None when nothing is in production."""
        if self.only is not None:
            return self.only
        if subject is not None:
            # A placed subject first: the memo hit reads no other field of the snapshot.
            chosen = self.sticky.get(subject)
            if chosen is not None:
                return chosen
        if not self.model_ids:
            return None
        if subject is None:
            return self.table[int(random.random() * 100)]
        chosen = self.place(subject)
        self.remember(subject, chosen)
        return chosen

    def remember(self, subject: str, chosen: str) -> None:
        """Keep a placed subject in the memo, within the budget's bytes."""
        budget = self.budget
        if budget is None:
            budget = self.budget = MemoBudget(DEFAULT_MEMO_BYTES, self.forget_subjects)
        cost = sys.getsizeof(subject) + MEMO_ENTRY_BYTES
        if cost > budget.limit:
            return  # larger than the whole budget: placed each time, never kept
        if budget.used + cost > budget.limit:
            budget.spill()
        self.sticky[subject] = chosen
        self.sticky_bytes += cost
        budget.used += cost

    def forget_subjects(self) -> None:
        """Empty the memo and give its bytes back to the budget."""
        if self.budget is not None:
            self.budget.used = max(0, self.budget.used - self.sticky_bytes)
        self.sticky = {}
        self.sticky_bytes = 0

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
    tenant_id: uuid.UUID,
    rows: Sequence[VersionRow],
    loaded_at: float,
    expires: float = math.inf,
    *,
    generation: int = 0,
    slug: str = "",
    budget: MemoBudget | None = None,
) -> Snapshot:
    """A snapshot from (version id, version, model id, traffic) rows of production versions.

    Raises InvariantViolation when the shares do not sum to 100 (the database's invariant is
    broken): a broken split is an error, not a guess (the seed quietly served versions[0]).
    """
    signature = signature_of(rows)
    if signature and sum(r[3] for r in signature) != 100:
        raise InvariantViolation(str(tenant_id), {r[1]: r[3] for r in signature})
    model_ids = tuple(r[2] for r in signature)
    return Snapshot(
        tenant_id=tenant_id,
        loaded_at=loaded_at,
        expires=expires,
        generation=generation,
        slug=slug,
        verified_at=loaded_at,
        budget=budget,
        signature=signature,
        model_ids=model_ids,
        versions=tuple(r[1] for r in signature),
        shares=tuple(r[3] for r in signature),
        only=model_ids[0] if len(model_ids) == 1 else None,
        table=tuple(r[2] for r in signature for _ in range(r[3])),
        keys=tuple(version_key(r[0], r[3]) for r in signature),
    )


def signature_of(rows: Sequence[VersionRow]) -> tuple[VersionRow, ...]:
    return tuple(sorted((tuple(r) for r in rows if r[3] > 0), key=lambda r: r[1]))  # type: ignore[misc]


# Bytes of a name memo entry beyond the name itself (dict slots in `aliases` and `by_name`, the
# id object), and of a snapshot.
NAME_ENTRY_BYTES = 240
SNAPSHOT_BASE_BYTES = 2048
# Bytes a placed subject of the flat memo costs beyond its name's and subject's own sizes: the key
# tuple, the dict slot and index, its place in its tenant's list.
PLACED_ENTRY_BYTES = 160

PlacedKey = tuple[Any, str]  # (the tenant's name as called, the subject)
SNAPSHOT_VERSION_BYTES = 320


class Memos:
    """A Router's memos, each bounded in bytes: snapshots by tenant id (evicted oldest-read
    first), names -> tenant id (aliases), unknown names -> until when (missing), and the budget
    of placed subjects shared by the snapshots. Not thread-safe: the Router holds its lock
    around every change; lookups (dict.get) may run concurrently."""

    def __init__(self, subject_bytes: int, name_bytes: int, snapshot_bytes: int) -> None:
        self.snapshots: dict[uuid.UUID, Snapshot] = {}
        self.aliases: dict[object, uuid.UUID] = {}
        # The fast path: a name in `aliases` -> the snapshot last served for it. A snapshot that
        # is no longer its tenant's is retired (expired for good), so a stale entry only sends
        # the call down the slow path.
        self.by_name: dict[object, Snapshot] = {}
        self.missing: dict[object, float] = {}
        # The Router's flat memo of placed subjects, (name, subject) -> model id, with each
        # tenant's keys so that a change of the tenant drops exactly its entries.
        self.placed: dict[PlacedKey, str] = {}
        self._placed_by_tenant: dict[uuid.UUID, list[PlacedKey]] = {}
        self.budget = MemoBudget(subject_bytes, self.spill_subjects)
        self._name_limit, self._snapshot_limit = name_bytes, snapshot_bytes
        self._bytes = {"snapshots": 0, "aliases": 0, "missing": 0}

    def store(self, snapshot: Snapshot, previous: Snapshot | None) -> None:
        """Make `snapshot` the tenant's (it may be `previous`, kept with its memo); a snapshot
        it replaces is retired: never served as current again, wherever it is still held."""
        old = self.snapshots.pop(snapshot.tenant_id, None)  # re-inserted last: evicted last
        if old is not None:
            self._bytes["snapshots"] -= snapshot_size(old)
        for replaced in {id(s): s for s in (old, previous) if s is not None}.values():
            if replaced is not snapshot:
                retire(replaced)
        self.snapshots[snapshot.tenant_id] = snapshot
        self._bytes["snapshots"] += snapshot_size(snapshot)
        while self._bytes["snapshots"] > self._snapshot_limit and len(self.snapshots) > 1:
            self.drop(next(iter(self.snapshots)))

    def drop(self, tenant_id: uuid.UUID) -> None:
        snapshot = self.snapshots.pop(tenant_id, None)
        if snapshot is not None:
            self._bytes["snapshots"] -= snapshot_size(snapshot)
            retire(snapshot)

    def remember(self, memo: str, name: object, value: object) -> None:
        """Put name -> value in a name memo ("aliases" or "missing"); a full one starts over."""
        table: dict[object, object] = self.aliases if memo == "aliases" else self.missing  # type: ignore[assignment]
        if name in table:
            table[name] = value
            return
        cost = NAME_ENTRY_BYTES + sys.getsizeof(name)
        if self._bytes[memo] + cost > self._name_limit:
            self.forget(memo)
        if cost <= self._name_limit:
            table[name] = value
            self._bytes[memo] += cost

    def forget(self, memo: str) -> None:
        (self.aliases if memo == "aliases" else self.missing).clear()
        if memo == "aliases":
            self.by_name.clear()
        self._bytes[memo] = 0

    def place(self, key: PlacedKey, tenant_id: uuid.UUID, model: str) -> None:
        """Remember a placed subject in the flat memo, on the shared subject budget."""
        cost = PLACED_ENTRY_BYTES + sys.getsizeof(key[0]) + sys.getsizeof(key[1])
        if cost > self.budget.limit or key in self.placed:
            return
        if self.budget.used + cost > self.budget.limit:
            self.budget.spill()
        self.placed[key] = model
        self._placed_by_tenant.setdefault(tenant_id, []).append(key)
        self.budget.used += cost

    def forget_placed(self, tenant_id: uuid.UUID | None) -> None:
        """Drop the tenant's placed subjects (everyone's when None). Their bytes stay counted
        until the budget spills: a change is rare, a recount per change is not needed."""
        if tenant_id is None:
            self.placed.clear()
            self._placed_by_tenant.clear()
            return
        for key in self._placed_by_tenant.pop(tenant_id, ()):
            self.placed.pop(key, None)

    def spill_subjects(self) -> None:
        self.forget_placed(None)
        for snapshot in list(self.snapshots.values()):
            snapshot.forget_subjects()
        self.budget.used = 0

    @property
    def sizes(self) -> dict[str, int]:
        """Bytes held by each memo (estimates)."""
        return {"subjects": self.budget.used, **self._bytes}


def retire(snapshot: Snapshot) -> None:
    snapshot.current, snapshot.expires = False, -math.inf
    snapshot.forget_subjects()


def snapshot_size(snapshot: Snapshot) -> int:
    return SNAPSHOT_BASE_BYTES + SNAPSHOT_VERSION_BYTES * len(snapshot.model_ids)
