"""The canary controller: watches both models' traffic, asks ``judge_canary``, moves the weight.

The service calls ``observe`` for every answered request and ``evaluate`` now and then (every
few requests, and on a timer). Advancing moves the router to the next step's weight and starts a
new observation window; the last step calls ``on_promote``; a rollback sets the weight to 0 at
once and calls ``on_rollback`` with the verdict's figures.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from policies.canary import CanaryPolicy, CanaryStats, Side, Verdict, judge_canary
from serving.router import Router

__all__ = ["CanaryController"]

_WINDOW = 10_000  # latest observations kept per model and step


@dataclass
class _Window:
    requests: int = 0
    errors: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=_WINDOW))
    predictions: deque = field(default_factory=lambda: deque(maxlen=_WINDOW))

    def side(self) -> Side:
        return Side(self.requests, self.errors, list(self.latencies), list(self.predictions))


class CanaryController:
    def __init__(
        self,
        router: Router,
        policy: CanaryPolicy,
        *,
        on_promote: Callable[[Verdict], None],
        on_rollback: Callable[[Verdict], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.router, self.policy = router, policy
        self._on_promote, self._on_rollback, self._clock = on_promote, on_rollback, clock
        self._lock = threading.Lock()
        self.state = "idle"  # idle | running | promoted | rolled_back
        self.step = 0
        self.last: Verdict | None = None
        self._windows: dict[str, _Window] = {}
        self._started = 0.0
        self.held = False  # an admin holds the weight: advance no further

    def start(self) -> None:
        with self._lock:
            self.state, self.step, self.held = "idle", 0, False
            self._new_window()  # a new canary: no reference from an earlier one
            self.state = "running"

    def stop(self) -> None:
        """No canary any more (promoted, rolled back or replaced): no traffic to it."""
        with self._lock:
            self.router.weight = 0
            if self.state == "running":
                self.state = "idle"

    def set_weight(self, weight: float, *, hold: bool = False) -> None:
        """Move the weight by hand; analysis restarts at the first step at or above it. With
        ``hold``, the canary stays at this weight (it can still be rolled back) until the next call."""
        with self._lock:
            if self.state != "running":
                raise ValueError(f"no canary analysis is running (state: {self.state})")
            steps = self.policy.steps
            self.step = next((i for i, s in enumerate(steps) if s >= weight), len(steps) - 1)
            self._new_window()
            self.router.weight = weight
            self.held = hold

    def abort(self, reason: str) -> Verdict:
        """Roll back by hand (the admin endpoint)."""
        verdict = Verdict("rollback", [reason])
        with self._lock:
            if self.state != "running":
                return verdict
            self._rollback(verdict)
        self._on_rollback(verdict)
        return verdict

    def observe(self, target: str, *, ok: bool, latency_ms: float, predictions: Sequence[float] = ()) -> None:
        """One request answered (or failed) by ``target``, with the model's time and its answers."""
        with self._lock:
            if self.state != "running":
                return
            window = self._windows[target]
            window.requests += 1
            window.errors += 0 if ok else 1
            window.latencies.append(latency_ms)
            window.predictions.extend(predictions)

    def evaluate(self) -> Verdict | None:
        """Judge the current step and act on the verdict; None when no canary is running."""
        callback = None
        with self._lock:
            if self.state != "running":
                return None
            stats = CanaryStats(
                self.step,
                self._clock() - self._started,
                self._windows["canary"].side(),
                self._windows["champion"].side(),
            )
            verdict = judge_canary(stats, self.policy)
            if verdict.action == "advance" and self.held:
                verdict = Verdict("hold", [f"held at {self.router.weight:g}% by an admin", *verdict.reasons])
            self.last = verdict
            if verdict.action == "rollback":
                self._rollback(verdict)
                callback = self._on_rollback
            elif verdict.action == "advance" and verdict.final:
                self.state = "promoted"
                callback = self._on_promote
            elif verdict.action == "advance":
                self.step += 1
                self._new_window()
        if callback is not None:
            callback(verdict)
        return verdict

    def status(self) -> dict[str, Any]:
        with self._lock:
            canary = self._windows.get("canary", _Window())
            return {
                "state": self.state,
                "step": self.step,
                "weight": self.router.weight,
                "held": self.held,
                "canary_requests": canary.requests,
                "canary_errors": canary.errors,
                "last_verdict": None
                if self.last is None
                else {"action": self.last.action, "reasons": self.last.reasons},
            }

    def _new_window(self) -> None:
        # The champion's latencies and predictions carry over from step to step: they are the
        # reference the canary is compared with, and at 100 % the champion answers (almost) nothing.
        before = self._windows.get("champion") if self.state == "running" else None
        self._windows = {"canary": _Window(), "champion": _Window()}
        if before is not None:
            self._windows["champion"].latencies.extend(before.latencies)
            self._windows["champion"].predictions.extend(before.predictions)
        self._started = self._clock()
        self.router.weight = self.policy.steps[self.step]

    def _rollback(self, verdict: Verdict) -> None:
        self.router.weight = 0  # first: no further request reaches the canary
        self.state, self.last = "rolled_back", verdict
