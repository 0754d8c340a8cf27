"""The routing document and the shared test vectors: the document carries what a client needs to
reproduce `registry.routing`'s picks, and the committed vectors are what Python computes now."""

from __future__ import annotations

import itertools
import json
import uuid

import pytest

from registry.errors import InvariantViolation
from registry.routing import PRIME, build_snapshot, version_key
from registry.routing_document import ALGORITHM, document_etag, routing_document
from tests import routing_vectors

TENANT = uuid.UUID("00000000-0000-4000-8000-000000000001")
V1, V2, V3 = (uuid.UUID(int=n) for n in (11, 22, 33))


def test_committed_vectors_are_what_python_computes_now() -> None:
    expected = routing_vectors.render(routing_vectors.generate())
    committed = routing_vectors.PATH.read_text(encoding="utf-8")
    # On a mismatch: the pick changed (a break for every client and every sticky subject) or the
    # generator did; regenerate with `python -m tests.routing_vectors` only if it was meant.
    assert committed == expected


def test_vectors_cover_enough_picks_and_splits() -> None:
    data = json.loads(routing_vectors.PATH.read_text(encoding="utf-8"))
    picks = [p for case in data["cases"] for p in case["picks"]]
    assert len(picks) >= 10_000
    subjects = {s for s, _ in picks}
    assert "" in subjects
    assert any(len(s) >= 1000 for s in subjects)
    assert any(any(ord(c) > 0xFFFF for c in s) for s in subjects)
    splits = {tuple(v["traffic_percent"] for v in c["document"]["versions"]) for c in data["cases"]}
    assert {(), (100,), (50, 50), (90, 10), (70, 20, 10)} <= splits


def test_growing_canary_only_moves_subjects_to_the_canary() -> None:
    data = json.loads(routing_vectors.PATH.read_text(encoding="utf-8"))
    steps = [c for c in data["cases"] if c["name"].startswith("canary at ")]
    assert [c["name"] for c in steps] == [f"canary at {p}" for p in (10, 25, 50, 100)]
    canary = steps[-1]["document"]["versions"][0]["model_id"]
    for before, after in itertools.pairwise(steps):
        moved = 0
        for (subject, old), (same, new) in zip(before["picks"], after["picks"], strict=True):
            assert subject == same
            assert new in (old, canary), subject
            moved += new != old
        assert moved > 0


def test_document_shape() -> None:
    rows = [(V2, 2, "ft:two", 10), (V1, 1, "ft:one", 90), (V3, 3, "ft:three", 0)]
    document = routing_document(TENANT, "acme", rows)
    assert list(document) == ["schema_version", "tenant", "algorithm", "prime", "versions", "etag"]
    assert document["schema_version"] == 1
    assert document["tenant"] == {"id": str(TENANT), "slug": "acme"}
    assert document["algorithm"] == ALGORITHM
    assert document["prime"] == str(PRIME) == "2305843009213693951"
    # Ascending version order (the tie-break order), the 0% row left out.
    assert [v["version"] for v in document["versions"]] == [1, 2]
    first = document["versions"][0]
    a, b, _ = version_key(V1, 90)
    assert first == {
        "version": 1,
        "version_id": str(V1),
        "model_id": "ft:one",
        "traffic_percent": 90,
        "a": str(a),
        "b": str(b),
    }
    assert json.loads(json.dumps(document)) == document  # JSON-able as it is


def test_nothing_in_production_is_an_empty_list() -> None:
    document = routing_document(TENANT, "acme", [])
    assert document["versions"] == []
    assert build_snapshot(TENANT, [], 0.0).pick("anyone") is None


def test_etag_is_stable_and_follows_the_content() -> None:
    rows = [(V1, 1, "ft:one", 90), (V2, 2, "ft:two", 10)]
    document = routing_document(TENANT, "acme", rows)
    etag = document["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) == 34
    assert routing_document(TENANT, "acme", list(reversed(rows)))["etag"] == etag
    assert document_etag(document) == etag
    changed = [(V1, 1, "ft:one", 75), (V2, 2, "ft:two", 25)]
    assert routing_document(TENANT, "acme", changed)["etag"] != etag
    assert routing_document(TENANT, "acme-renamed", rows)["etag"] != etag


def test_a_broken_split_is_refused() -> None:
    with pytest.raises(InvariantViolation):
        routing_document(TENANT, "acme", [(V1, 1, "ft:one", 90), (V2, 2, "ft:two", 20)])


def test_intermediates_match_the_snapshot() -> None:
    data = json.loads(routing_vectors.PATH.read_text(encoding="utf-8"))
    (case,) = [c for c in data["cases"] if "intermediates" in c]
    versions = case["document"]["versions"]
    picks = dict(case["picks"])
    for item in case["intermediates"]:
        best = max(range(len(versions)), key=lambda i: (item["scores"][i], -i))
        assert versions[best]["model_id"] == picks[item["subject"]]
