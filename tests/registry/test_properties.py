"""Properties of the registry over random inputs (hypothesis).

- any sequence of deploys, promotes and rollbacks keeps the invariant (both databases);
- a proportional rescale sums exactly to its total, each share within 1 point of exact;
- `after_promote` keeps the invariant and gives the promoted version what was asked;
- resolve with a subject is sticky while the split is unchanged;
- when a canary grows from p to q, subjects only move toward it;
- over 100,000 random subjects each version's share is within 1 point of its traffic.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import routing, traffic, versions
from registry.db import unit_of_work
from registry.errors import NothingToRollBack, VersionNotFound
from registry.routing import build_snapshot
from registry.tenants import PolicyChanges, find_tenant, set_policy
from tests.factories import deploy_new, make_tenant
from tests.registry import churn

_tenants = itertools.count()

# ----------------------------------------------------------------- the invariant, in a database

operation = st.one_of(
    st.tuples(
        st.just("deploy"),
        st.sampled_from(churn.STRATEGIES),
        st.integers(1, 99),
        st.sampled_from(["approve", "approve", "reject", None]),
    ),
    st.tuples(st.just("promote"), st.integers(1, 6), st.integers(1, 100)),
    st.tuples(st.just("rollback")),
)


def _apply(url: str, slug: str, op: tuple[Any, ...]) -> None:
    """Run one operation in its own unit of work and check what it did to the split."""
    with unit_of_work(url) as session:
        tenant = find_tenant(session, slug)
        before = versions.current_split(session, tenant.id)
        if op[0] == "deploy":
            _, strategy, percent, recommendation = op
            versions_before = len(versions.list_versions(session, tenant.id))
            set_policy(session, tenant.id, PolicyChanges(strategy=strategy, canary_percent=percent))
            result = deploy_new(session, tenant, recommendation)
            registered = len(versions.list_versions(session, tenant.id)) - versions_before
            assert registered == (1 if recommendation == "approve" else 0)
            after = versions.current_split(session, tenant.id)
            if result.version is not None and strategy == "blue_green":
                assert after == before
            elif result.version is not None:
                wanted = 100 if strategy == "immediate" or not before else percent
                assert after[result.version] == wanted
        elif op[0] == "promote":
            _, number, percent = op
            change = versions.promote(session, slug, number, percent)
            others = {v for v in before if v != number}
            assert change.after[number] == (100 if percent == 100 or not others else percent)
            assert set(change.after) <= others | {number}
        else:
            change = versions.rollback(session, slug)
            newest = max(before)
            assert newest not in change.after
            if len(before) > 1:
                assert set(change.after) == set(before) - {newest}


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operation, max_size=12))
def test_any_sequence_of_operations_keeps_the_invariant(db_url: str, ops: list[Any]) -> None:
    slug = f"prop-{next(_tenants)}"  # a fresh tenant per example, in the test's database
    with unit_of_work(db_url) as session:
        make_tenant(session, slug)
    for op in ops:
        # A refusal changes nothing (test_bad_input shows it); the checks below still run.
        with contextlib.suppress(NothingToRollBack, VersionNotFound):
            _apply(db_url, slug, op)
        with unit_of_work(db_url) as session:
            state = churn.read_state(session)
        assert churn.violations(state) == []


# ------------------------------------------------------------------------------ traffic math

weights = st.dictionaries(st.integers(1, 50), st.integers(1, 100), min_size=1, max_size=8)


@given(weights=weights, total=st.integers(0, 100))
def test_rescale_sums_exactly_and_is_proportional(weights: dict[int, int], total: int) -> None:
    shares = traffic.rescale(weights, total)
    assert sum(shares.values()) == total
    assert set(shares) <= set(weights)
    weight_sum = sum(weights.values())
    for version, weight in weights.items():
        exact = weight * total / weight_sum
        assert abs(shares.get(version, 0) - exact) < 1
    assert all(share > 0 for share in shares.values())


@st.composite
def valid_splits(draw: st.DrawFn, min_size: int = 0) -> dict[int, int]:
    raw = draw(
        st.dictionaries(st.integers(1, 20), st.integers(1, 100), min_size=min_size, max_size=6)
    )
    return traffic.rescale(raw, 100) if raw else {}


@given(current=valid_splits(), version=st.integers(1, 25), percent=st.integers(1, 100))
def test_after_promote_keeps_the_invariant(
    current: dict[int, int], version: int, percent: int
) -> None:
    after = traffic.after_promote(current, version, percent)
    assert traffic.is_valid(after) and after
    others = {v: p for v, p in current.items() if v != version}
    assert after[version] == (percent if others and percent < 100 else 100)
    assert set(after) <= set(others) | {version}
    for v, share in after.items():
        if v != version:
            assert abs(share - others[v] * (100 - percent) / sum(others.values())) < 1


# ---------------------------------------------------------------------------------- routing


def snapshot_of(split: dict[int, int], ids: dict[int, uuid.UUID]) -> routing.Snapshot:
    rows = [(ids[v], v, f"model-v{v}", p) for v, p in split.items()]
    return build_snapshot(uuid.uuid4(), rows, 0.0)


def ids_for(split: dict[int, int], seed: int) -> dict[int, uuid.UUID]:
    rng = random.Random(seed)
    return {v: uuid.UUID(int=rng.getrandbits(128)) for v in split}


@given(
    split=valid_splits(min_size=1),
    seed=st.integers(0, 2**32),
    subjects=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=50),
)
def test_resolve_with_a_subject_is_sticky(
    split: dict[int, int], seed: int, subjects: list[str]
) -> None:
    ids = ids_for(split, seed)
    snapshot = snapshot_of(split, ids)
    first = [snapshot.pick(s) for s in subjects]
    assert [snapshot.pick(s) for s in reversed(subjects)] == first[::-1]
    # Another process, or this one after a refresh: a new snapshot of the same split agrees.
    other = snapshot_of(split, ids)
    assert [other.pick(s) for s in subjects] == first
    assert set(first) <= {f"model-v{v}" for v in split}


SUBJECTS = [f"subject-{n}" for n in range(2000)]


def _moves(
    before: dict[int, int], after: dict[int, int], ids: dict[int, uuid.UUID]
) -> Counter[str]:
    old, new = snapshot_of(before, ids), snapshot_of(after, ids)
    return Counter(f"{a}->{b}" for a, b in ((old.pick(s), new.pick(s)) for s in SUBJECTS) if a != b)


@settings(max_examples=40, deadline=None)
@given(
    p=st.integers(1, 98),
    data=st.data(),
    seed=st.integers(0, 2**32),
)
def test_a_growing_canary_only_gains_subjects(p: int, data: st.DataObject, seed: int) -> None:
    """Canary v9 and one stable version (the DESIGN's 10% -> 25%): from p to any q > p."""
    q = data.draw(st.integers(p + 1, 100))
    before = {1: 100 - p, 9: p}
    after = traffic.after_promote(before, 9, q)
    ids = ids_for(after | before, seed)
    moves = _moves(before, after, ids)
    assert set(moves) <= {"model-v1->model-v9"}


@st.composite
def proportional_growth(draw: st.DrawFn) -> tuple[dict[int, int], dict[int, int]]:
    """Several stable versions whose shares shrink in exact proportion when the canary grows
    (ratios r, scaled by a before and by b < a after), so no rounding is involved."""
    ratios = draw(st.lists(st.integers(1, 6), min_size=2, max_size=4))
    total = sum(ratios)
    a = draw(st.integers(2, 99 // total))
    b = draw(st.integers(1, a - 1))
    before = {v + 1: r * a for v, r in enumerate(ratios)}
    before[9] = 100 - total * a
    after = {v + 1: r * b for v, r in enumerate(ratios)}
    after[9] = 100 - total * b
    return before, after


@settings(max_examples=30, deadline=None)
@given(growth=proportional_growth(), seed=st.integers(0, 2**32))
def test_a_growing_canary_only_gains_subjects_from_several_others(
    growth: tuple[dict[int, int], dict[int, int]], seed: int
) -> None:
    before, after = growth
    assert traffic.after_promote(before, 9, after[9]) == after  # the registry's own rescale
    moves = _moves(before, after, ids_for(after, seed))
    assert all(move.endswith("->model-v9") for move in moves), moves


@pytest.mark.xfail(
    strict=True,
    reason="known limit: when the others' shares must round (45/45 -> 37/38), their ratio "
    "changes and rendezvous moves a few subjects between them (~0.4% here); integer percents "
    "cannot keep the exact ratio",
)
def test_a_growing_canary_with_rounded_others_moves_only_toward_it() -> None:
    before = {1: 45, 2: 45, 9: 10}
    after = traffic.after_promote(before, 9, 25)
    assert after == {1: 37, 2: 38, 9: 25}
    moves = _moves(before, after, ids_for(after, 1))
    assert all(move.endswith("->model-v9") for move in moves), moves


@pytest.mark.parametrize(
    "split",
    [
        {1: 90, 2: 10},
        {1: 37, 2: 38, 3: 25},
        {1: 1, 2: 49, 3: 50},
        {1: 20, 2: 20, 3: 20, 4: 20, 5: 20},
    ],
    ids=["90-10", "37-38-25", "1-49-50", "5x20"],
)
def test_each_versions_share_of_100k_subjects_is_its_traffic(split: dict[int, int]) -> None:
    rng = random.Random(20260101)
    snapshot = snapshot_of(split, ids_for(split, 7))
    counts = Counter(snapshot.pick(f"{rng.getrandbits(64):x}") for _ in range(100_000))
    for version, percent in split.items():
        share = counts[f"model-v{version}"] / 1000  # percent of 100,000
        assert abs(share - percent) <= 1, (version, share, percent)
