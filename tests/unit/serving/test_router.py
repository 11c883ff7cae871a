"""The router splits by weight, sticks per key, and only ever moves keys towards the canary."""

from __future__ import annotations

import pytest

from conveyor.serving.router import Router


def test_random_split_follows_the_weight() -> None:
    router = Router(20, seed=1)
    share = sum(router.route() == "canary" for _ in range(20_000)) / 20_000
    assert share == pytest.approx(0.20, abs=0.015)


@pytest.mark.parametrize("weight, expected", [(0, 0.0), (100, 1.0)])
def test_zero_and_full_weight(weight: float, expected: float) -> None:
    router = Router(weight)
    assert sum(router.route(f"user-{i}") == "canary" for i in range(2000)) / 2000 == expected


def test_keyed_requests_are_sticky_and_split_by_weight() -> None:
    router = Router(30)
    first = {f"user-{i}": router.route(f"user-{i}") for i in range(10_000)}
    assert all(router.route(key) == target for key, target in first.items())
    assert sum(t == "canary" for t in first.values()) / len(first) == pytest.approx(0.30, abs=0.02)


def test_raising_the_weight_never_moves_a_key_back_to_the_champion() -> None:
    router = Router(10)
    before = {f"k{i}": router.route(f"k{i}") for i in range(5000)}
    router.weight = 50
    after = {key: router.route(key) for key in before}
    assert not [k for k in before if before[k] == "canary" and after[k] == "champion"]


def test_weight_outside_0_to_100_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        Router(120)
