"""The shared routing test vectors: `python -m tests.routing_vectors` rewrites
tests/routing_vectors.json from what `registry.routing` computes now.

Each case is a routing document (`registry.routing_document`) and the model Python's snapshot picks
for each of ~2,000 subjects; a few subjects also carry the intermediate numbers (the subject's
number, each version's residue and score) for a new client to debug against. Clients in other
languages must reproduce every pick (clients/typescript/test/vectors.test.mjs does). The test
tests/registry/test_routing_document.py fails when the committed file and Python disagree.
"""

from __future__ import annotations

import json
import math
import random
import sys
import uuid
from pathlib import Path
from typing import Any

from registry.routing import PRIME, build_snapshot, subject_number, version_key
from registry.routing_document import routing_document

PATH = Path(__file__).resolve().parent / "routing_vectors.json"
_NAMESPACE = uuid.UUID("5b7d3c1e-4f0a-4c7e-9a59-2f0d6f1e8a11")

# (case name, [(version number, traffic percent), ...]); version ids depend on the group and the
# number only, so the canary steps share them as a growing canary does.
CASES: list[tuple[str, str, list[tuple[int, int]]]] = [
    ("nothing in production", "empty", []),
    ("one version", "one", [(1, 100)]),
    ("50/50", "halves", [(1, 50), (2, 50)]),
    ("90/10", "ninety", [(1, 90), (2, 10)]),
    ("three versions 70/20/10", "three", [(1, 70), (2, 20), (3, 10)]),
    ("three versions 34/33/33", "thirds", [(1, 34), (2, 33), (3, 33)]),
    ("canary at 10", "canary", [(1, 90), (2, 10)]),
    ("canary at 25", "canary", [(1, 75), (2, 25)]),
    ("canary at 50", "canary", [(1, 50), (2, 50)]),
    ("canary at 100", "canary", [(2, 100)]),
]
INTERMEDIATES_CASE = "three versions 70/20/10"
INTERMEDIATES_COUNT = 40


def subjects() -> list[str]:
    """About 2,000 subjects: ids as serving apps send them, unicode, long ones and edge cases."""
    rng = random.Random(15)
    out = [f"user-{i}" for i in range(1000)]
    out += [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(400)]
    out += [f"person.{i}@example.com" for i in range(200)]
    out += [str(rng.getrandbits(63)) for _ in range(100)]
    for i in range(40):
        out += [f"ユーザー{i}", f"usuário-{i}", f"\U0001f642{i}", f"s\u0308{i}", f"Привет-{i}"]
    out += ["x" * n + str(n) for n in (64, 100, 255, 256, 1000, 1023, 2048, 4096)]
    out += ["🙂" * 500, "é" * 777]
    out += [
        "",
        "a",
        "a\x00",  # trailing NULs add nothing to the little-endian number: same pick as "a"
        "\x00",
        " ",
        "0",
        "-1",
        "null",
        "undefined",
        "abcdefg",  # 7, 8 and 9 bytes: around one 61-bit word
        "abcdefgh",
        "abcdefghi",
        "\xff" * 8,
        "\uffff",
        "\U0010ffff",
        "\t\n\r",
        "a" * 16,
    ]
    return out


def version_id(group: str, number: int) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{group}/v{number}")


def tenant_id(group: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"tenant/{group}")


def generate() -> dict[str, Any]:
    pool = subjects()
    cases = []
    for name, group, split in CASES:
        rows = [
            (version_id(group, n), n, f"ft:gpt-4o-mini-2024-07-18:{group}::v{n}", p)
            for n, p in split
        ]
        tid = tenant_id(group)
        snapshot = build_snapshot(tid, rows, loaded_at=0.0)
        case: dict[str, Any] = {
            "name": name,
            "document": routing_document(tid, f"vectors-{group}", rows),
            "picks": [[s, snapshot.pick(s)] for s in pool],
        }
        if name == INTERMEDIATES_CASE:
            case["intermediates"] = [_intermediate(s, rows) for s in pool[:INTERMEDIATES_COUNT]]
        cases.append(case)
    return {
        "about": "Picks of registry.routing for shared client tests; regenerate with "
        "`python -m tests.routing_vectors`. Format and algorithm: docs/routing.md.",
        "cases": cases,
    }


def _intermediate(subject: str, rows: list[Any]) -> dict[str, Any]:
    m = subject_number(subject)
    residues, scores = [], []
    for vid, _, _, percent in sorted(rows, key=lambda r: r[1]):
        a, b, inverse_weight = version_key(vid, percent)
        residue = (a * m + b) % PRIME
        residues.append(str(residue))
        scores.append(math.log((residue + 0.5) * (1.0 / PRIME)) * inverse_weight)
    return {"subject": subject, "m": str(m), "residues": residues, "scores": scores}


def render(data: dict[str, Any]) -> str:
    """The file's text: one pick per line, so a diff shows which subjects moved."""

    def dump(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))

    def items(values: list[Any]) -> list[str]:
        return [f"    {dump(v)}{',' if j < len(values) - 1 else ''}" for j, v in enumerate(values)]

    lines = ["{", f' "about": {dump(data["about"])},', ' "cases": [']
    for i, case in enumerate(data["cases"]):
        lines.append("  {")
        lines.append(f'   "name": {dump(case["name"])},')
        lines.append(f'   "document": {dump(case["document"])},')
        if "intermediates" in case:
            lines.append('   "intermediates": [')
            lines += items(case["intermediates"])
            lines.append("   ],")
        lines.append('   "picks": [')
        lines += items(case["picks"])
        lines.append("   ]")
        lines.append("  }" + ("," if i < len(data["cases"]) - 1 else ""))
    lines += [" ]", "}", ""]
    return "\n".join(lines)


def main() -> int:
    text = render(generate())
    PATH.write_text(text, encoding="utf-8")
    picks = sum(len(c["picks"]) for c in json.loads(text)["cases"])
    print(f"wrote {PATH.name}: {picks} picks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
