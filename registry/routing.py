"""Which model serves a request: `resolve(tenant, subject=None)`.

Called on every request of the serving app, so it answers from a per-process snapshot of each
tenant's split (`registry.snapshots`), not from the database: a pick costs well under 1 µs.
The Router that holds them is in `registry.router`; this module is its entry point.

How a snapshot stays fresh: the process's change feed (`registry.change_feed`: LISTEN/NOTIFY on
PostgreSQL, a polled generation table on SQLite) tells the Router which tenants changed, and it
re-reads only those. While the feed vouches for "every change committed up to V is delivered",
an untouched snapshot stays valid until V + staleness, with no query at all; so the database
reads of a process do not grow with the number of tenants it serves.

Guarantees:

- **Bounded staleness.** A change committed by any process at time C is served by every call
  from C + `staleness` on (`FTDEPLOY_ROUTING_STALENESS_SECONDS`, 1 s), plus the duration of one
  read; with the feed connected, usually within milliseconds. When the feed cannot vouch (its
  connection dropped, the database is slow), a snapshot older than `staleness` is re-read before
  it is served, as without a feed. After the feed reconnects, every snapshot is re-read once.
- **Read your own writes.** When this process commits a change of a tenant's traffic
  (`splits.check_and_audit` registers `forget_tenant` with `registry.db.after_commit`), every
  Router in the process marks that tenant's snapshot stale right after the commit: the next call
  sees the change. A read
  that was under way when a change was learned is used for its own call but not kept.
- **Never fails because the database does.** When a read fails (SQLAlchemyError), the tenant's
  last known split is served, for at most `max_stale` seconds since it was last known current
  (`FTDEPLOY_ROUTING_MAX_STALE_SECONDS`, default unbounded). During such an outage the database
  is tried again by one call at a time, with backoff (0.05 s doubling to 5 s), not by every call;
  the staleness shows in the metrics `ftdeploy_routing_stale_tenants` and
  `ftdeploy_routing_stale_age_seconds`, and in one log line per tenant per outage
  (`routing.serving_last_known`), then `routing.database_recovered`. Only a tenant never read
  before (or past `max_stale`) fails, with RoutingUnavailable.
- **A clear "no model".** A tenant with nothing in production resolves to None. An unknown tenant
  raises TenantNotFound (a malformed name InvalidInput); a broken split (not summing to 100)
  raises InvariantViolation rather than guessing as the seed did.
- **Sticky subjects.** Weighted rendezvous hashing (see `registry.snapshots`): the same subject
  gets the same version while the split is unchanged, in every process and Python version; a
  growing canary only moves subjects toward itself. Without a subject, a weighted random draw.
- **Bounded memory.** Snapshots are keyed by the tenant's id: a tenant named by its slug, or by
  its id spelled in any way `uuid.UUID` reads (case, dashes, braces, `urn:uuid:`), has one
  snapshot and costs one read. Names are mapped to ids through a memo, unknown names are
  remembered for `staleness`, placed subjects (of splits of several versions) in one memo per
  Router keyed by (name, subject); each memo is bounded in bytes and starts over when full,
  snapshots are evicted oldest-read first.

A hot call with a subject is one lookup in that flat memo and a check of the feed's vouch: its
cost hardly grows with the number of tenants, since it touches no per-tenant object. An entry
stands for its tenant's current snapshot and is dropped whenever that snapshot is marked stale or
replaced (a change learned, an own commit, a resync), so the guarantees above hold unchanged;
without a vouching feed, calls go through the snapshot and its own expiry.
"""

from __future__ import annotations

import math
import threading
import uuid

from registry.change_feed import ChangeFeed
from registry.router import ROUTERS, Router
from registry.snapshots import PRIME, Snapshot, build_snapshot, subject_number, version_key

__all__ = [
    "PRIME",
    "Router",
    "Snapshot",
    "build_snapshot",
    "change_feed",
    "default_router",
    "forget_tenant",
    "reset_default_router",
    "resolve",
    "subject_number",
    "version_key",
]  # fmt: skip


# -- the serving app's entry point ---------------------------------------------------------------

_default_router: Router | None = None
_default_lock = threading.Lock()


def default_router() -> Router:
    """The process's Router over the configured database, kept fresh by the process's change
    feed, with the configured staleness, outage bound and memo sizes (`FTDEPLOY_ROUTING_*`).
    Built at the first call."""
    global _default_router
    router = _default_router
    if router is None:
        with _default_lock:
            if _default_router is None:
                from registry.change_feed import process_feed
                from registry.db import session_factory
                from registry.settings import get_settings

                settings = get_settings()
                sessions = session_factory()
                staleness = settings.routing_staleness_seconds
                _default_router = Router(
                    sessions,
                    staleness=staleness,
                    feed=process_feed(sessions, staleness / 2) if staleness > 0 else None,
                    max_stale=settings.routing_max_stale_seconds,
                    subject_memo_bytes=settings.routing_subject_memo_bytes,
                    name_memo_bytes=settings.routing_name_memo_bytes,
                    snapshot_memo_bytes=settings.routing_snapshot_memo_bytes,
                )
            router = _default_router
    return router


def reset_default_router() -> None:
    """Forget the default Router (after a change of settings, say); the next call builds one."""
    global _default_router
    with _default_lock:
        if _default_router is not None:
            _default_router.close()
        _default_router = None


def resolve(tenant: str, subject: str | None = None) -> str | None:
    """The model id the serving app should use for this request: `registry.routing.resolve`.

    None when the tenant has nothing in production ("no model"); sticky per subject; answered from
    the process's snapshot, at most `FTDEPLOY_ROUTING_STALENESS_SECONDS` old, fresh after a change
    committed by this process, and the last known split while the database is down. Raises
    TenantNotFound / InvalidInput for a bad tenant, RoutingUnavailable for a tenant never read
    while the database is down.
    """
    return default_router().resolve(tenant, subject)


def change_feed() -> ChangeFeed:
    """The change feed of the default Router's database (for the HTTP API's change stream):
    `change_feed().subscribe(callback)` or `with change_feed().subscription() as changes: …`."""
    from registry.change_feed import process_feed
    from registry.db import session_factory
    from registry.settings import get_settings

    staleness = get_settings().routing_staleness_seconds
    return process_feed(session_factory(), staleness / 2 if staleness > 0 else 0.5)


# -- invalidation after this process's own commits -----------------------------------------------


def forget_tenant(tenant_id: uuid.UUID, generation: float = math.inf) -> None:
    """Mark the tenant's snapshot stale in every Router of this process (one already read at
    `generation` or later is spared): the next call reads the split afresh.
    `splits.check_and_audit` registers this to run after the change commits."""
    for router in list(ROUTERS):
        router.invalidate({tenant_id: generation})
