"""A tenant's routing document: its production split, with everything a client in another language
needs to make exactly the pick `registry.routing` makes (the format and the algorithm are in
docs/routing.md; the shared test vectors in tests/routing_vectors.json hold both sides to it).

Served by the HTTP API as `GET /v1/tenants/{tenant}/routing` with the document's `etag` as its
`ETag` header; the change stream announces a tenant's new `etag`. Pure: no database, no clock.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

from registry.snapshots import PRIME, VersionRow, build_snapshot, version_key

SCHEMA_VERSION = 1
ALGORITHM = "ftdeploy-rendezvous-cw61-v1"


def routing_document(
    tenant_id: uuid.UUID, tenant_slug: str, rows: Sequence[VersionRow]
) -> dict[str, Any]:
    """The document of one tenant from its production rows (version id, version, model id,
    traffic percent), the rows `registry.routing.build_snapshot` takes.

    Versions are listed in ascending version number (the order ties are broken in), rows at 0%
    left out; no production version gives an empty list ("no model"). `a` and `b` are decimal
    strings: they exceed 2**53, past which JSON numbers lose digits in most languages. The `etag`
    is a strong entity tag (quotes included) over the rest of the document: equal content, equal
    tag, in every process. Raises InvariantViolation when the shares do not sum to 100.
    """
    snapshot = build_snapshot(tenant_id, rows, loaded_at=0.0)  # validates, filters and orders
    versions = []
    for version_id, number, model_id, percent in snapshot.signature:
        a, b, _ = version_key(version_id, percent)
        versions.append(
            {
                "version": number,
                "version_id": str(version_id),
                "model_id": model_id,
                "traffic_percent": percent,
                "a": str(a),
                "b": str(b),
            }
        )
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tenant": {"id": str(tenant_id), "slug": tenant_slug},
        "algorithm": ALGORITHM,
        "prime": str(PRIME),
        "versions": versions,
    }
    return {**body, "etag": document_etag(body)}


def document_etag(body: dict[str, Any]) -> str:
    """The strong entity tag of a document's content (every key but `etag`): the first 128 bits
    of the SHA-256 of its canonical JSON (sorted keys, no spaces, UTF-8), in double quotes."""
    content = {k: v for k, v in body.items() if k != "etag"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:32] + '"'
