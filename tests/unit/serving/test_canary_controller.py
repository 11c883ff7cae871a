"""The controller walks a healthy canary through every step and rolls a faulty one back, over the
workers' shared state: two controllers on one state judge and route as one."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from conveyor.policies.canary import CanaryPolicy
from conveyor.serving.canary import CanaryController
from conveyor.serving.router import Router
from conveyor.serving.shared import SharedState

POLICY = CanaryPolicy(steps=(10, 50, 100), min_requests=100, min_seconds=5, max_error_rate=0.02, analysis_seconds=0.5)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def drive(
    controllers: list[CanaryController],
    clock: Clock,
    *,
    error_rate: float = 0.0,
    slow: float = 1.0,
    skew: float = 0.0,
    limit: int = 20_000,
) -> int:
    """Send requests (spread over the controllers, as over workers) until the canary is promoted or
    rolled back; returns the canary requests sent."""
    rng = random.Random(4)
    canary_sent = 0
    judge = controllers[0]
    for i in range(limit):
        clock.now += 0.01
        worker = controllers[i % len(controllers)]
        target = worker.router.route()
        if target == "canary":
            canary_sent += 1
            ok = rng.random() >= error_rate
            worker.observe(
                "canary",
                ok=ok,
                kind="ok" if ok else "error",
                latency_ms=rng.gammavariate(9, 2.2) * slow,
                predictions=[min(1.0, rng.betavariate(2, 8) + skew)],
            )
        else:
            worker.observe(
                "champion", ok=True, latency_ms=rng.gammavariate(9, 2.2), predictions=[rng.betavariate(2, 8)]
            )
        if i % 20 == 0:
            for other in controllers[1:]:
                other.flush()
                other.refresh()
            judge.evaluate()
            if judge.row.state != "running":
                break
    return canary_sent


@pytest.fixture
def state(tmp_path: Path) -> SharedState:
    made = SharedState(tmp_path / "run.db")
    yield made
    made.close()


def controller(state: SharedState, clock: Clock, events: list) -> CanaryController:
    made = CanaryController(
        state,
        Router(0, seed=1),
        POLICY,
        clock=clock,
        on_promote=lambda v: events.append(("promote", v)),
        on_rollback=lambda v: events.append(("rollback", v)),
    )
    made.serving = "7"
    return made


def test_a_healthy_canary_goes_through_every_step_to_promotion(state: SharedState) -> None:
    clock, events = Clock(), []
    ctl = controller(state, clock, events)
    ctl.start("7")
    assert ctl.router.weight == 10
    drive([ctl], clock)
    assert ctl.row.state == "promoted" and [e[0] for e in events] == ["promote"]
    assert ctl.row.step == 2 and ctl.router.weight == 100


def test_two_workers_share_one_analysis_and_switch_together(tmp_path: Path) -> None:
    clock, events = Clock(), []
    states = [SharedState(tmp_path / "run.db"), SharedState(tmp_path / "run.db")]
    try:
        leader, other = (controller(s, clock, events) for s in states)
        leader.start("7")
        other.refresh()
        assert other.router.weight == 10  # the follower routes by the leader's step
        drive([leader, other], clock, error_rate=0.05)
        other.refresh()
        assert leader.row.state == "rolled_back" and other.router.weight == 0 and len(events) == 1
        figures = leader.status()
        assert figures["canary_requests"] > 0
        counted = {o.role for o in states[0].observations(leader.row.run, "canary")}
        assert counted == {"canary"}
    finally:
        for s in states:
            s.close()


def test_a_canary_failing_5_percent_is_rolled_back_within_200_requests(state: SharedState) -> None:
    clock, events = Clock(), []
    ctl = controller(state, clock, events)
    ctl.start("7")
    sent = drive([ctl], clock, error_rate=0.05)
    assert ctl.row.state == "rolled_back" and ctl.router.weight == 0
    assert sent <= 200 and "canary errors" in events[0][1].reasons[0]


def test_slow_and_skewed_canaries_are_rolled_back_after_the_breach_persists(state: SharedState) -> None:
    for kwargs, phrase in (({"slow": 3.0}, "latency regressed"), ({"skew": 0.5}, "PSI")):
        clock, events = Clock(), []
        ctl = controller(state, clock, events)
        ctl.start("7")
        drive([ctl], clock, **kwargs)
        assert ctl.row.state == "rolled_back" and phrase in " ".join(events[0][1].reasons)
        assert "3 analyses in a row" in events[0][1].reasons[-1]
        ctl.stop()


def test_abort_rolls_back_at_once_and_a_second_abort_does_nothing(state: SharedState) -> None:
    clock, events = Clock(), []
    ctl = controller(state, clock, events)
    ctl.start("7")
    ctl.abort("operator pressed abort")
    ctl.abort("pressed again")
    status = ctl.status()
    assert status["state"] == "rolled_back" and status["weight"] == 0
    assert status["last_verdict"]["reasons"] == ["operator pressed abort"]
    assert ctl.router.route("anyone") == "champion" and [e[0] for e in events] == ["rollback"]


def test_latency_is_judged_against_the_champion_timed_on_the_same_rows(state: SharedState) -> None:
    """The canary's small calls look slower than the champion's own batched traffic; timed on the
    same rows (paired), the champion is just as slow, so nothing is breached."""
    clock, events = Clock(), []
    ctl = controller(state, clock, events)
    ctl.start("7")
    rng = random.Random(9)
    for _ in range(400):
        clock.now += 0.05
        ctl.observe("champion", ok=True, latency_ms=rng.gammavariate(9, 1.0), predictions=[0.2])
        if rng.random() < 0.3:
            ctl.observe("canary", ok=True, latency_ms=rng.gammavariate(9, 3.0), predictions=[0.2])
            ctl.observe("paired", ok=True, latency_ms=rng.gammavariate(9, 3.0))
    verdict = ctl.evaluate()
    assert verdict is not None and not verdict.breached, verdict.reasons
    assert any("latency within limits" in r for r in verdict.reasons)
