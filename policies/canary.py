"""The canary policy (``policies/canary.yaml``) and the pure judgement of a canary step.

``judge_canary(stats, policy)`` compares the canary with the champion over the current step:
its error rate, its latency at a percentile relative to the champion's, and the shift of its
prediction distribution (population stability index). It answers ``advance`` (this step is
done and clean), ``hold`` (not enough requests or time yet), or ``rollback`` (a limit is broken,
or is certain to be broken by the time the step could end).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["CanaryPolicy", "CanaryStats", "LatencyRule", "Verdict", "judge_canary", "psi"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencyRule(_Strict):
    percentile: Literal["p50", "p95", "p99"] = "p95"
    max_ratio: float = Field(1.5, gt=0)  # canary latency / champion latency at that percentile


class CanaryPolicy(_Strict):
    steps: tuple[float, ...] = Field((5.0, 25.0, 50.0, 100.0), min_length=1)  # canary weight (%) per step
    min_requests: int = Field(200, ge=1)  # canary requests a step needs before it can advance
    min_seconds: float = Field(30.0, ge=0)  # and the time it must last
    max_error_rate: float = Field(0.02, ge=0, le=1)
    latency: LatencyRule = LatencyRule()
    max_psi: float = Field(0.2, gt=0)  # prediction distribution shift vs the champion

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError("steps must be increasing weights between 0 (exclusive) and 100")
        return steps


@dataclass(frozen=True)
class Side:
    """One model's traffic during the step."""

    requests: int
    errors: int
    latencies_ms: Sequence[float] = ()
    predictions: Sequence[float] = ()


@dataclass(frozen=True)
class CanaryStats:
    step: int  # index into policy.steps
    elapsed_seconds: float
    canary: Side
    champion: Side


@dataclass(frozen=True)
class Verdict:
    action: Literal["advance", "hold", "rollback"]
    reasons: list[str] = field(default_factory=list)
    final: bool = False  # advancing past the last step: the canary becomes champion


def psi(expected: Sequence[float], actual: Sequence[float], bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected`` (bins: expected's quantiles)."""
    reference, current = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float)
    if reference.size == 0 or current.size == 0:
        return 0.0
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:  # a constant reference: everything either matches it or not
        same = float(np.mean(np.isclose(current, reference[0])))
        return 0.0 if same == 1.0 else float("inf")
    edges[0], edges[-1] = -np.inf, np.inf
    ref_share = np.histogram(reference, edges)[0] / reference.size
    cur_share = np.histogram(current, edges)[0] / current.size
    ref_share, cur_share = np.clip(ref_share, 1e-4, None), np.clip(cur_share, 1e-4, None)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def judge_canary(stats: CanaryStats, policy: CanaryPolicy) -> Verdict:
    """advance, hold or rollback, with the figures that decided it."""
    canary, champion = stats.canary, stats.champion
    allowed_errors = policy.max_error_rate * max(policy.min_requests, canary.requests)
    if canary.errors > allowed_errors:
        rate = canary.errors / max(canary.requests, 1)
        return Verdict(
            "rollback",
            [
                f"canary errors {canary.errors} of {canary.requests} ({rate:.1%}) exceed the "
                f"allowed {policy.max_error_rate:.1%} of at least {policy.min_requests} requests"
            ],
        )
    waiting = []
    if canary.requests < policy.min_requests:
        waiting.append(f"{canary.requests} of {policy.min_requests} canary requests")
    if stats.elapsed_seconds < policy.min_seconds:
        waiting.append(f"{stats.elapsed_seconds:.0f} of {policy.min_seconds:.0f} s")
    if waiting:
        return Verdict("hold", ["step not complete: " + ", ".join(waiting)])

    breaches: list[str] = []
    passed = [f"error rate {canary.errors / canary.requests:.2%} within {policy.max_error_rate:.1%}"]
    q = {"p50": 50, "p95": 95, "p99": 99}[policy.latency.percentile]
    if len(canary.latencies_ms) and len(champion.latencies_ms):
        ours, theirs = np.percentile(canary.latencies_ms, q), np.percentile(champion.latencies_ms, q)
        ratio = ours / max(theirs, 1e-9)
        (breaches if ratio > policy.latency.max_ratio else passed).append(
            f"{policy.latency.percentile} latency {ours:.1f} ms vs champion {theirs:.1f} ms: ratio {ratio:.2f} "
            f"(max {policy.latency.max_ratio:g})"
        )
    # About 30 predictions a bin on each side: with fewer, empty bins make PSI's sampling noise
    # heavy-tailed (a healthy canary of 60 requests would reach 0.9 now and then).
    bins = min(10, len(canary.predictions) // 30, len(champion.predictions) // 30)
    if bins >= 2:
        shift = psi(champion.predictions, canary.predictions, bins=bins)
        (breaches if shift > policy.max_psi else passed).append(f"prediction PSI {shift:.3f} (max {policy.max_psi:g})")
    elif len(canary.predictions):
        passed.append(
            f"prediction PSI not judged: {len(champion.predictions)} champion and "
            f"{len(canary.predictions)} canary predictions are too few to compare"
        )
    if breaches:
        return Verdict("rollback", breaches)
    return Verdict("advance", passed, final=stats.step >= len(policy.steps) - 1)
