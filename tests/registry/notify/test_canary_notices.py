"""The sweep's decisions as notifications: stepped, promoted, rolled back (with the counts and
bounds behind them), and a canary holding past a share of its deadline, told once per step."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.registry.canary_support import (
    Clock,
    auto_promote_sweep,
    canary_tenant,
    record,
    simulated_clock,
)
from tests.registry.notify.support import add, outbox


@pytest.fixture
def clock() -> Iterator[Clock]:
    with simulated_clock() as fake:
        yield fake


def _canary_events(sessions: sessionmaker[Session]) -> list[tuple[str, dict]]:
    rows = [r for r in outbox(sessions) if r.type.startswith("canary.")]
    return [(r.type, r.data) for r in sorted(rows, key=lambda r: (r.created_at, r.seq))]


def test_steps_and_promotion_carry_counts_bounds_and_splits(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    add(sessions, "all")
    _, slug = canary_tenant(sessions, canary_steps=(10, 50, 100))
    for _ in range(2):
        record(sessions, slug, 2, ok=60, failed=0, at=clock())
        record(sessions, slug, 1, ok=300, failed=3, at=clock())
        clock.advance(70)
        [item] = auto_promote_sweep(sessions, clock()).items
        assert item.applied
    (stepped, step), (promoted, promotion) = _canary_events(sessions)
    assert (stepped, promoted) == ("canary.stepped", "canary.promoted")
    assert step["split_before"] == {"1": 90, "2": 10} and step["split_after"] == {"1": 50, "2": 50}
    assert promotion["split_after"] == {"2": 100} and promotion["actor"] == "auto"
    decision = step["decision"]
    assert decision["canary"]["requests"] == 60 and decision["canary"]["successes"] == 60
    assert decision["stable"]["requests"] == 303
    assert decision["threshold"] == 0.9 and decision["min_samples"] == 50
    assert decision["bounds_95"]["upper"] == 1.0 and 0.9 < decision["bounds_95"]["lower"] < 1
    assert decision["next_percent"] == 50 and "meets 0.9" in step["reason"]


def test_rollback_and_holding_near_the_deadline(
    sessions: sessionmaker[Session], clock: Clock
) -> None:
    add(sessions, "all")
    _, bad = canary_tenant(sessions, "bad")
    canary_tenant(sessions, "slow", progress_deadline_seconds=200)
    record(sessions, bad, 2, ok=10, failed=50, at=clock())
    clock.advance(5)
    auto_promote_sweep(sessions, clock())
    clock.advance(100)  # slow: no data at half its deadline (the default share is 0.5)
    auto_promote_sweep(sessions, clock())
    clock.advance(10)
    auto_promote_sweep(sessions, clock())  # still holding: not told twice
    kinds = [(kind, data["tenant"]["slug"]) for kind, data in _canary_events(sessions)]
    assert kinds == [("canary.rolled_back", "bad"), ("canary.holding", "slow")]
    rolled = _canary_events(sessions)[0][1]
    assert rolled["split_after"] == {"1": 100} and "clearly failing" in rolled["reason"]
    assert rolled["decision"]["canary"] == {
        "requests": 60,
        "successes": 10,
        "score_count": 0,
        "score_mean": None,
    }
    holding = _canary_events(sessions)[1][1]
    assert (
        "waiting for data" in holding["reason"] and holding["decision"]["deadline_seconds"] == 200
    )
