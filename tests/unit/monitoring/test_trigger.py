"""The retraining trigger: one retraining per breach window, a cooldown per champion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conveyor.monitoring.trigger import Breach, PastTrigger, decide_trigger
from conveyor.policies.drift import DriftPolicy, Retraining

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
POLICY = DriftPolicy(retraining=Retraining(cooldown_minutes=60))


def breach(version: str = "3", since_hours: float = 2, until_hours: float = 0) -> Breach:
    return Breach(
        "drift",
        "m",
        version,
        NOW - timedelta(hours=since_hours),
        NOW - timedelta(hours=until_hours),
        "sha256:" + "a" * 64,
        "drift",
    )


def past(version: str = "3", at_minutes: float = 10, since_hours: float = 3, until_hours: float = 2.5) -> PastTrigger:
    return PastTrigger(
        NOW - timedelta(minutes=at_minutes),
        version,
        NOW - timedelta(hours=since_hours),
        NOW - timedelta(hours=until_hours),
        7,
    )


def test_a_first_breach_starts_a_retraining() -> None:
    decision = decide_trigger(breach(), [], POLICY, NOW)
    assert decision.start and "drift breach on version 3" in decision.reason


def test_an_overlapping_window_of_the_same_champion_does_not_start_another() -> None:
    decision = decide_trigger(breach(), [past(at_minutes=300, since_hours=2.5, until_hours=1)], POLICY, NOW)
    assert not decision.start and "already started for this window" in decision.reason and "#7" in decision.reason


def test_the_cooldown_holds_for_the_same_champion_and_ends() -> None:
    held = decide_trigger(breach(), [past(at_minutes=10)], POLICY, NOW)
    assert not held.start and "cooldown" in held.reason and "50 min" in held.reason
    assert decide_trigger(breach(), [past(at_minutes=61)], POLICY, NOW).start


def test_a_new_champion_is_not_held_by_its_predecessor() -> None:
    assert decide_trigger(
        breach(version="4"), [past(version="3", at_minutes=1, since_hours=2, until_hours=0)], POLICY, NOW
    ).start
