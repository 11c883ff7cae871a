"""The canary controller: the canary's step, weight and verdict, kept in the workers' shared state.

Every worker ``observe``s the answers it served (buffered, written to the shared state a few
times a second, at once after a canary failure) and ``refresh``es its router's weight from the
shared row. The leading worker ``start``s a canary it has loaded and ``evaluate``s it: all
workers' observations of the step against the champion's, through ``judge_canary``. Advancing
moves every worker to the next step's weight and opens a new observation window; the last step
calls ``on_promote``; a rollback sets the weight to 0 for every worker at once and calls
``on_rollback``. Admin changes (weight, hold, abort) may come to any worker: each is a
compare-and-set on the shared row, so no two workers act on one step.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.policies.canary import (
    CanaryPolicy,
    CanaryStats,
    LlmCanaryPolicy,
    LlmSide,
    LlmStats,
    Side,
    Verdict,
    judge_canary,
    judge_llm_canary,
)
from conveyor.serving.router import Router
from conveyor.serving.shared import CanaryRow, Observation

if TYPE_CHECKING:
    from conveyor.serving.shared import StateStore

__all__ = ["CanaryController", "LlmCanaryController"]

_CHAMPION_REFERENCE = 10_000  # the champion's latest observations in this canary's run


class CanaryController:
    def __init__(
        self,
        state: StateStore,
        router: Router,
        policy: CanaryPolicy,
        *,
        on_promote: Callable[[Verdict], None],
        on_rollback: Callable[[Verdict], None],
        clock: Callable[[], float] = time.time,
        worker: str = "",
    ) -> None:
        self.state, self.router, self.policy, self.worker = state, router, policy, worker
        self._on_promote, self._on_rollback, self._clock = on_promote, on_rollback, clock
        self._buffer: list[Observation] = []
        self._buffer_lock = threading.Lock()
        self.row = state.canary()
        self.serving: str | None = None  # the canary version this worker has loaded

    # -- every worker -----------------------------------------------------------------------------

    def refresh(self) -> CanaryRow:
        """Read the shared row and route by it: the canary's weight only while it runs (or is being promoted)
        and only if this worker serves that version."""
        row = self.row = self.state.canary()
        live = row.state in ("running", "promoted") and row.version is not None and row.version == self.serving
        self.router.weight = row.weight if live else 0
        return row

    def observe(
        self,
        role: str,
        *,
        ok: bool,
        kind: str = "ok",
        latency_ms: float,
        predictions: Sequence[float] = (),
        signals: dict[str, Any] | None = None,
    ) -> None:
        """One request answered (or failed) by ``role``, with the model's time and its answers."""
        row = self.row
        if row.state != "running" or row.run is None:
            return
        observation = Observation(
            row.run, row.window, role, ok, kind, latency_ms, tuple(predictions), self.worker, signals
        )
        with self._buffer_lock:
            self._buffer.append(observation)

    def flush(self) -> None:
        """Write the buffered observations to the shared state."""
        with self._buffer_lock:
            buffered, self._buffer = self._buffer, []
        self.state.add(buffered)

    # -- the leader -------------------------------------------------------------------------------

    def start(self, version: str) -> CanaryRow:
        """Begin the analysis of ``version`` at the first step (unless it is already running: a new leader)."""
        row = self.state.canary()
        if row.state == "running" and row.version == version:
            return self.refresh()
        run = uuid.uuid4().hex
        self.state.forget(keep_run=run)
        self.state.change_canary(
            row.epoch,
            run=run,
            version=version,
            state="running",
            step=0,
            weight=self._steps[0],
            held=False,
            window=row.window + 1,
            window_started=self._clock(),
            breaches_in_a_row=0,
            last_analysis=0.0,
            verdict=None,
        )
        return self.refresh()

    def stop(self) -> None:
        """No canary any more (promoted, rolled back or replaced): no traffic to it, for every worker."""
        for _ in range(10):
            row = self.state.canary()
            state = "idle" if row.state in ("running", "promoted") else row.state
            if self.state.change_canary(row.epoch, state=state, weight=0.0) is not None:
                break
        self.refresh()

    def evaluate(self) -> Verdict | None:
        """Judge the current step and act on the verdict; None when no canary runs or it is not time yet."""
        self.flush()
        row = self.state.canary()
        if row.state != "running" or row.run is None:
            return None
        now = self._clock()
        verdict = self._judge(row, now)
        immediate = verdict.action == "rollback" and not verdict.breached
        if now - row.last_analysis < self._analysis_seconds and not immediate:
            return None
        if verdict.action == "advance" and row.held:
            verdict = Verdict("hold", [f"held at {row.weight:g}% by an admin", *verdict.reasons])
        changes: dict[str, Any] = {
            "last_analysis": now,
            "verdict": {"action": verdict.action, "reasons": verdict.reasons, "inconclusive": verdict.inconclusive},
            "breaches_in_a_row": row.breaches_in_a_row + 1 if verdict.breached else 0,
        }
        callback = None
        if verdict.action == "rollback":
            changes |= {"state": "rolled_back", "weight": 0.0}
            callback = self._on_rollback
        elif verdict.action == "advance" and verdict.final:
            changes |= {"state": "promoted"}
            callback = self._on_promote
        elif verdict.action == "advance":
            step = row.step + 1
            changes |= self._new_window(row, step, self._steps[step], now)
        if self.state.change_canary(row.epoch, **changes) is None:
            return None  # an admin changed the canary meanwhile: judge again next time
        self.refresh()
        if callback is not None:
            callback(verdict)
        return verdict

    # -- admin (any worker) -----------------------------------------------------------------------

    def set_weight(self, weight: float, *, hold: bool = False) -> None:
        """Move the weight by hand; analysis restarts at the first step at or above it. With
        ``hold``, the canary stays at this weight (it can still be rolled back) until the next call."""
        row = self.state.canary()
        if row.state != "running":
            raise ValueError(f"no canary analysis is running (state: {row.state})")
        steps = self._steps
        step = next((i for i, s in enumerate(steps) if s >= weight), len(steps) - 1)
        changes = self._new_window(row, step, weight, self._clock()) | {"held": hold}
        if self.state.change_canary(row.epoch, **changes) is None:
            raise ValueError("the canary changed meanwhile (a verdict was reached); check its status and retry")
        self.refresh()

    def abort(self, reason: str) -> Verdict:
        """Roll back by hand (the admin endpoint)."""
        verdict = Verdict("rollback", [reason])
        row = self.state.canary()
        if row.state != "running":
            return verdict
        changed = self.state.change_canary(
            row.epoch, state="rolled_back", weight=0.0, verdict={"action": "rollback", "reasons": [reason]}
        )
        self.refresh()
        if changed is not None:
            self._on_rollback(verdict)
        return verdict

    def status(self) -> dict[str, Any]:
        row = self.state.canary()
        canary = self.state.observations(row.run, "canary", window=row.window) if row.run else []
        return {
            "state": row.state,
            "version": row.version,
            "step": row.step,
            "weight": row.weight,
            "held": row.held,
            "canary_requests": len(canary),
            "canary_errors": sum(not o.ok for o in canary),
            "canary_requests_by_worker": dict(collections.Counter(o.worker for o in canary)),
            "breaches_in_a_row": row.breaches_in_a_row,
            "last_verdict": row.verdict,
        }

    # -- figures ------------------------------------------------------------------------------------

    @property
    def _steps(self) -> tuple[float, ...]:
        return self.policy.steps

    @property
    def _analysis_seconds(self) -> float:
        return self.policy.analysis_seconds

    def _judge(self, row: CanaryRow, now: float) -> Verdict:
        return judge_canary(self._stats(row, now), self.policy)

    def _stats(self, row: CanaryRow, now: float) -> CanaryStats:
        assert row.run is not None
        canary = self.state.observations(row.run, "canary", window=row.window)
        champion = self.state.observations(row.run, "champion", window=row.window)
        if len(champion) < self.policy.latency.min_samples:  # at high weights: the champion's earlier steps
            champion = self.state.observations(row.run, "champion", limit=_CHAMPION_REFERENCE)
        reference = _side(champion)
        paired = self.state.observations(row.run, "paired", window=row.window)
        if len(paired) >= self.policy.latency.min_samples:  # the same work, timed on the champion
            reference = Side(
                reference.requests, reference.errors, [o.latency_ms for o in paired], reference.predictions
            )
        return CanaryStats(row.step, now - row.window_started, _side(canary), reference, row.breaches_in_a_row)

    def _new_window(self, row: CanaryRow, step: int, weight: float, now: float) -> dict[str, Any]:
        return {
            "step": step,
            "weight": weight,
            "window": row.window + 1,
            "window_started": now,
            "breaches_in_a_row": 0,
        }


def _side(observations: list[Observation]) -> Side:
    return Side(
        requests=len(observations),
        errors=sum(not o.ok for o in observations),
        latencies_ms=[o.latency_ms for o in observations if o.ok],
        predictions=[p for o in observations if o.ok for p in o.predictions],
        breaches=sum(o.kind == "contract" for o in observations),
    )


class LlmCanaryController(CanaryController):
    """The same walk for an LLM release, judged on its answers' signals (``judge_llm_canary``)."""

    @property
    def _llm(self) -> LlmCanaryPolicy:
        return self.policy.llm

    @property
    def _steps(self) -> tuple[float, ...]:
        return self._llm.steps

    @property
    def _analysis_seconds(self) -> float:
        return self._llm.analysis_seconds

    def _judge(self, row: CanaryRow, now: float) -> Verdict:
        assert row.run is not None
        canary = self.state.observations(row.run, "canary", window=row.window)
        champion = self.state.observations(row.run, "champion", window=row.window)
        if len(champion) < self._llm.min_requests:  # at high weights: the champion's earlier steps
            champion = self.state.observations(row.run, "champion", limit=_CHAMPION_REFERENCE)
        stats = LlmStats(
            row.step, now - row.window_started, _llm_side(canary), _llm_side(champion), row.breaches_in_a_row
        )
        return judge_llm_canary(stats, self._llm)


def _llm_side(observations: list[Observation]) -> LlmSide:
    answered = [o.signals or {} for o in observations if o.ok]
    scored = [s for s in answered if s.get("scored")]
    return LlmSide(
        requests=len(observations),
        errors=sum(not o.ok for o in observations),
        breaches=sum(o.kind == "contract" for o in observations),
        ttft_ms=[s["ttft_ms"] for s in answered if "ttft_ms" in s],
        tpot_ms=[s["tpot_ms"] for s in answered if s.get("tpot_ms") is not None],
        blocked=sum(bool(s.get("blocked")) for s in answered),
        refused=sum(bool(s.get("refused")) for s in answered),
        scored=len(scored),
        score_failures=sum(not s.get("score_ok") for s in scored),
    )
