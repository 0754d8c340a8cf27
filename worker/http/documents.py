"""The routing document of a snapshot, through one function (`registry.routing_document` owns the
format), memoized per split so a steady tenant's document is built once."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from registry.routing import Snapshot
from registry.routing_document import routing_document

_memo: dict[uuid.UUID, tuple[tuple[Any, ...], str, dict[str, Any]]] = {}
_lock = threading.Lock()
MEMO_LIMIT = 100_000


def for_snapshot(snapshot: Snapshot, slug: str) -> dict[str, Any]:
    """The document (with its `etag`) of the split this snapshot holds."""
    memo = _memo.get(snapshot.tenant_id)
    if memo is not None and memo[0] == snapshot.signature and memo[1] == slug:
        return memo[2]
    document = routing_document(snapshot.tenant_id, slug, list(snapshot.signature))
    with _lock:
        if len(_memo) >= MEMO_LIMIT:
            _memo.clear()
        _memo[snapshot.tenant_id] = (snapshot.signature, slug, document)
    return document
