"""The controller walks a healthy canary through every step and rolls a faulty one back fast."""

from __future__ import annotations

import random

from policies.canary import CanaryPolicy
from serving.canary import CanaryController
from serving.router import Router

POLICY = CanaryPolicy(steps=(10, 50, 100), min_requests=100, min_seconds=5, max_error_rate=0.02, max_psi=0.2)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drive(
    controller: CanaryController,
    clock: Clock,
    *,
    error_rate: float = 0.0,
    slow: float = 1.0,
    skew: float = 0.0,
    limit: int = 20_000,
) -> int:
    """Send requests until the canary is promoted or rolled back; returns canary requests sent."""
    rng = random.Random(4)
    canary_sent = 0
    for i in range(limit):
        clock.now += 0.01
        target = controller.router.route()
        if target == "canary":
            canary_sent += 1
            ok = rng.random() >= error_rate
            controller.observe(
                "canary",
                ok=ok,
                latency_ms=rng.gauss(20, 2) * slow,
                predictions=[min(1.0, rng.betavariate(2, 8) + skew)],
            )
        else:
            controller.observe("champion", ok=True, latency_ms=rng.gauss(20, 2), predictions=[rng.betavariate(2, 8)])
        if i % 10 == 0 and controller.evaluate() and controller.state != "running":
            break
    return canary_sent


def controller(clock: Clock, events: list) -> CanaryController:
    return CanaryController(
        Router(0, seed=1),
        POLICY,
        clock=clock,
        on_promote=lambda v: events.append(("promote", v)),
        on_rollback=lambda v: events.append(("rollback", v)),
    )


def test_a_healthy_canary_goes_through_every_step_to_promotion() -> None:
    clock, events = Clock(), []
    ctl = controller(clock, events)
    ctl.start()
    assert ctl.router.weight == 10
    drive(ctl, clock)
    assert ctl.state == "promoted" and [e[0] for e in events] == ["promote"]
    assert ctl.step == 2 and ctl.router.weight == 100


def test_a_canary_failing_5_percent_is_rolled_back_within_200_requests() -> None:
    clock, events = Clock(), []
    ctl = controller(clock, events)
    ctl.start()
    sent = drive(ctl, clock, error_rate=0.05)
    assert ctl.state == "rolled_back" and ctl.router.weight == 0
    assert sent <= 200 and "canary errors" in events[0][1].reasons[0]


def test_slow_and_skewed_canaries_are_rolled_back() -> None:
    for kwargs, phrase in (({"slow": 3.0}, "latency"), ({"skew": 0.5}, "PSI")):
        clock, events = Clock(), []
        ctl = controller(clock, events)
        ctl.start()
        drive(ctl, clock, **kwargs)
        assert ctl.state == "rolled_back" and phrase in " ".join(events[0][1].reasons)


def test_abort_rolls_back_at_once_and_status_says_so() -> None:
    clock, events = Clock(), []
    ctl = controller(clock, events)
    ctl.start()
    ctl.abort("operator pressed abort")
    status = ctl.status()
    assert status["state"] == "rolled_back" and status["weight"] == 0
    assert status["last_verdict"]["reasons"] == ["operator pressed abort"]
    assert ctl.router.route("anyone") == "champion" and events[0][0] == "rollback"
