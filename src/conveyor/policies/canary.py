"""The canary policy (``policies/canary.yaml``) and the pure judgement of a canary step.

``judge_canary(stats, policy)`` compares the canary with the champion over the current step and
answers ``advance`` (the step is done and clean), ``hold`` (not enough requests or time yet, or
the evidence is inconclusive), or ``rollback``.

Errors and contract breaches are faults, not noise: past ``max_error_rate`` (of at least
``min_requests``), the canary is rolled back at once. Latency and prediction shift are compared as
distributions, as Kayenta does, because a point estimate of a tail from a few hundred samples on
a shared machine is mostly noise: latency fails only when a one-sided Mann-Whitney U test is
significant, the effect is large (the canary slower in at least ``min_effect`` of all pairs), the
median is ``max_ratio`` times the champion's *and* more than ``slack_ms`` slower; predictions fail
when their PSI is over ``max_psi`` and a two-sample Kolmogorov-Smirnov test is significant. Such a
breach rolls back only after ``breach_limit`` analyses in a row (Flagger's threshold, Argo's
failureLimit); a latency that looks slower but is not significant is ``inconclusive`` and holds
the step until the evidence decides.

Latency here is the model's CPU time per call, taken in its own process: a model that is slower
does more work; a process that waits for a core on a busy machine is not a slower model (the
wall clock's waits are what the timeout, and so the error rate, judges). It is compared on the
same work: a share (``paired_share``) of the canary's calls is also
timed on the champion, the same rows as one call of their own, in the same moment, and the
canary's times are compared with those (the champion's own traffic comes in larger batches, at
other moments of a shared machine's noise). With too few paired times, the champion's traffic is
the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "CanaryPolicy",
    "CanaryStats",
    "LatencyRule",
    "LlmCanaryPolicy",
    "LlmSide",
    "LlmStats",
    "PredictionRule",
    "RateRule",
    "Side",
    "Verdict",
    "judge_canary",
    "judge_llm_canary",
    "psi",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencyRule(_Strict):
    significance: float = Field(0.01, gt=0, lt=0.5)  # Mann-Whitney U p-value below which a difference is real
    min_effect: float = Field(0.65, gt=0.5, le=1)  # share of (canary, champion) pairs where the canary is slower
    max_ratio: float = Field(1.5, gt=1)  # canary median latency / champion median latency
    slack_ms: float = Field(5.0, ge=0)  # a canary at most this much slower never fails on latency
    min_samples: int = Field(50, ge=10)  # per side; fewer is inconclusive
    paired_share: float = Field(0.25, ge=0, le=1)  # canary calls also timed on the champion (the same rows)


class PredictionRule(_Strict):
    max_psi: float = Field(0.2, gt=0)  # population stability index of the canary's answers vs the champion's
    significance: float = Field(0.01, gt=0, lt=0.5)  # two-sample Kolmogorov-Smirnov p-value


class RateRule(_Strict):
    max_increase: float = Field(0.10, gt=0, le=1)  # canary rate minus champion rate that counts as worse
    significance: float = Field(0.01, gt=0, lt=0.5)  # one-sided Fisher exact test: p below it is not noise


class LlmCanaryPolicy(_Strict):
    """A canary LLM release: the same walk, with signals an answer of words has."""

    steps: tuple[float, ...] = Field((10.0, 50.0, 100.0), min_length=1)
    min_requests: int = Field(30, ge=1)  # an answer takes a second, not a millisecond
    min_seconds: float = Field(20.0, ge=0)
    max_error_rate: float = Field(
        0.05, ge=0, le=1
    )  # errors, timeouts, crashes; an empty or malformed answer rolls back at once
    ttft: LatencyRule = LatencyRule(max_ratio=1.5, slack_ms=50, min_samples=20, paired_share=0)
    tpot: LatencyRule = LatencyRule(max_ratio=1.5, slack_ms=5, min_samples=20, paired_share=0)
    # Three rates, judged again as each step's window grows: at 0.01 each, a healthy canary was
    # rolled back in ~3 % of walks (bench/llm_canary.py); at 0.001, in none of 300.
    blocks: RateRule = RateRule(significance=0.001)  # answers withheld by an output guardrail
    refusals: RateRule = RateRule(significance=0.001)  # answers that refuse (guardrail or the model's own words)
    scores: RateRule = RateRule(
        significance=0.001
    )  # sampled answers failing the offline scorers that need no reference
    score_share: float = Field(1.0, ge=0, le=1)  # share of answers scored
    breach_limit: int = Field(3, ge=1)
    analysis_seconds: float = Field(2.0, gt=0)

    _increasing = field_validator("steps")(lambda steps: _check_steps(steps))


def _check_steps(steps: tuple[float, ...]) -> tuple[float, ...]:
    if any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
        raise ValueError("steps must be increasing weights between 0 (exclusive) and 100")
    return steps


class CanaryPolicy(_Strict):
    steps: tuple[float, ...] = Field((5.0, 25.0, 50.0, 100.0), min_length=1)  # canary weight (%) per step
    min_requests: int = Field(200, ge=1)  # canary requests a step needs before it can advance
    min_seconds: float = Field(30.0, ge=0)  # and the time it must last
    max_error_rate: float = Field(0.02, ge=0, le=1)  # errors and contract breaches: rollback at once past it
    latency: LatencyRule = LatencyRule()
    predictions: PredictionRule = PredictionRule()
    breach_limit: int = Field(3, ge=1)  # latency or prediction breaches in a row before a rollback
    analysis_seconds: float = Field(2.0, gt=0)  # at most one analysis this often (errors are judged at once)
    llm: LlmCanaryPolicy = LlmCanaryPolicy()  # for LLM releases

    _increasing = field_validator("steps")(lambda steps: _check_steps(steps))


@dataclass(frozen=True)
class Side:
    """One model's traffic during the step."""

    requests: int
    errors: int
    latencies_ms: Sequence[float] = ()
    predictions: Sequence[float] = ()
    breaches: int = 0  # answers that broke the output contract (counted in ``errors`` too)


@dataclass(frozen=True)
class CanaryStats:
    step: int  # index into policy.steps
    elapsed_seconds: float
    canary: Side
    champion: Side
    breaches_in_a_row: int = 0  # earlier analyses of this canary that found a latency or prediction breach


@dataclass(frozen=True)
class Verdict:
    action: Literal["advance", "hold", "rollback"]
    reasons: list[str] = field(default_factory=list)
    final: bool = False  # advancing past the last step: the canary becomes champion
    breached: bool = False  # this analysis found a latency or prediction breach (counts toward breach_limit)
    inconclusive: bool = False


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
    early = _faults_or_waiting(canary, stats.elapsed_seconds, policy, "broke the output contract")
    if early is not None:
        return early
    checks = [_latency(canary, champion, policy.latency), _predictions(canary, champion, policy.predictions)]
    return _conclude(checks, canary, stats.step, stats.breaches_in_a_row, policy)


class _Walk(Protocol):
    """What the two policies share: the walk's steps, its fault limit and its patience."""

    @property
    def steps(self) -> tuple[float, ...]: ...
    @property
    def min_requests(self) -> int: ...
    @property
    def min_seconds(self) -> float: ...
    @property
    def max_error_rate(self) -> float: ...
    @property
    def breach_limit(self) -> int: ...


def _faults_or_waiting(canary: Side | LlmSide, elapsed: float, policy: _Walk, broken: str) -> Verdict | None:
    """A rollback for faults (a broken answer, or errors past the rate), a hold while the step is
    incomplete, or None: the step is to be judged on its figures."""
    if canary.breaches:
        return Verdict("rollback", [f"{canary.breaches} canary answers {broken}"])
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
    if elapsed < policy.min_seconds:
        waiting.append(f"{elapsed:.0f} of {policy.min_seconds:.0f} s")
    if waiting:
        return Verdict("hold", ["step not complete: " + ", ".join(waiting)])
    return None


def _conclude(
    checks: list[tuple[Outcome, str]], canary: Side | LlmSide, step: int, breaches_in_a_row: int, policy: _Walk
) -> Verdict:
    """The step's verdict from its checks: a breach holds, and rolls back once it lasted
    ``breach_limit`` analyses; an inconclusive check holds; all passed advances."""
    breaches: list[str] = []
    passed = [f"error rate {canary.errors / canary.requests:.2%} within {policy.max_error_rate:.1%}"]
    unsure: list[str] = []
    for outcome, text in checks:
        {"fail": breaches, "pass": passed, "inconclusive": unsure}[outcome].append(text)
    if breaches:
        in_a_row = breaches_in_a_row + 1
        if in_a_row >= policy.breach_limit:
            return Verdict("rollback", [*breaches, f"breached in {in_a_row} analyses in a row"], breached=True)
        return Verdict(
            "hold", [*breaches, f"breach {in_a_row} of {policy.breach_limit} in a row: watching"], breached=True
        )
    if unsure:
        return Verdict("hold", [*unsure, *passed], inconclusive=True)
    return Verdict("advance", passed, final=step >= len(policy.steps) - 1)


Outcome = Literal["pass", "fail", "inconclusive"]


def _latency(canary: Side, champion: Side, rule: LatencyRule) -> tuple[Outcome, str]:
    from scipy.stats import mannwhitneyu

    ours, theirs = np.asarray(canary.latencies_ms, float), np.asarray(champion.latencies_ms, float)
    if min(ours.size, theirs.size) < rule.min_samples:
        return "inconclusive", (
            f"latency not judged yet: {ours.size} canary and {theirs.size} champion samples "
            f"(at least {rule.min_samples} each)"
        )
    median, reference = float(np.median(ours)), float(np.median(theirs))
    ratio, slower = median / max(reference, 1e-9), median - reference
    test = mannwhitneyu(ours, theirs, alternative="greater")
    effect = float(test.statistic) / (ours.size * theirs.size)  # P(a canary sample > a champion sample)
    figures = (
        f"median latency {median:.2f} ms vs champion {reference:.2f} ms (ratio {ratio:.2f}, "
        f"{slower:+.2f} ms); canary slower in {effect:.0%} of pairs, p={test.pvalue:.2g}"
    )
    looks_slow = ratio > rule.max_ratio and slower > rule.slack_ms
    if looks_slow and test.pvalue < rule.significance and effect >= rule.min_effect:
        return "fail", f"latency regressed: {figures}"
    if looks_slow:
        return "inconclusive", f"latency inconclusive: {figures}"
    return "pass", f"latency within limits: {figures}"


def _predictions(canary: Side, champion: Side, rule: PredictionRule) -> tuple[Outcome, str]:
    from scipy.stats import ks_2samp

    # About 30 predictions a bin on each side: with fewer, empty bins make PSI's sampling noise
    # heavy-tailed (a healthy canary of 60 requests would reach 0.9 now and then).
    bins = min(10, len(canary.predictions) // 30, len(champion.predictions) // 30)
    if bins < 2:
        return "pass", (
            f"prediction shift not judged: {len(champion.predictions)} champion and "
            f"{len(canary.predictions)} canary predictions are too few to compare"
        )
    shift = psi(champion.predictions, canary.predictions, bins=bins)
    p = float(ks_2samp(canary.predictions, champion.predictions).pvalue)
    text = f"prediction PSI {shift:.3f} (max {rule.max_psi:g}), KS p={p:.2g}"
    return ("fail" if shift > rule.max_psi and p < rule.significance else "pass"), text


# -- LLM releases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmSide:
    """One release's answers during the step (the failed ones counted, not measured)."""

    requests: int
    errors: int
    breaches: int  # empty or malformed answers: never sent, always a rollback
    ttft_ms: Sequence[float] = ()
    tpot_ms: Sequence[float] = ()
    blocked: int = 0
    refused: int = 0
    scored: int = 0
    score_failures: int = 0

    @property
    def answered(self) -> int:
        return self.requests - self.errors


@dataclass(frozen=True)
class LlmStats:
    step: int
    elapsed_seconds: float
    canary: LlmSide
    champion: LlmSide
    breaches_in_a_row: int = 0


def judge_llm_canary(stats: LlmStats, policy: LlmCanaryPolicy) -> Verdict:
    """``judge_canary`` for a release: faults at once; time to first token and per output token as
    distributions (Mann-Whitney); block, refusal and score-failure rates as proportions (one-sided
    Fisher exact test and a least increase), each breach counting toward ``breach_limit``."""
    canary, champion = stats.canary, stats.champion
    early = _faults_or_waiting(canary, stats.elapsed_seconds, policy, "were empty or malformed")
    if early is not None:
        return early
    ttft = _latency(Side(0, 0, canary.ttft_ms), Side(0, 0, champion.ttft_ms), policy.ttft)
    tpot = _latency(Side(0, 0, canary.tpot_ms), Side(0, 0, champion.tpot_ms), policy.tpot)
    checks = [
        (ttft[0], f"time to first token: {ttft[1]}"),
        (tpot[0], f"time per output token: {tpot[1]}"),
        _rate("guardrail blocks", canary.blocked, canary.answered, champion.blocked, champion.answered, policy.blocks),
        _rate("refusals", canary.refused, canary.answered, champion.refused, champion.answered, policy.refusals),
        _rate(
            "scorer failures",
            canary.score_failures,
            canary.scored,
            champion.score_failures,
            champion.scored,
            policy.scores,
        ),
    ]
    return _conclude(checks, canary, stats.step, stats.breaches_in_a_row, policy)


def _rate(what: str, ours: int, our_n: int, theirs: int, their_n: int, rule: RateRule) -> tuple[Outcome, str]:
    from scipy.stats import fisher_exact

    if our_n == 0 or their_n == 0:
        return "pass", f"{what} not judged: {our_n} canary and {their_n} champion answers"
    mine, reference = ours / our_n, theirs / their_n
    p = float(fisher_exact([[ours, our_n - ours], [theirs, their_n - theirs]], alternative="greater").pvalue)
    text = f"{what} {mine:.1%} of {our_n} vs champion {reference:.1%} of {their_n} (p={p:.2g})"
    worse = mine - reference >= rule.max_increase
    if worse and p < rule.significance:
        return "fail", f"{what} rose: {text}"
    if worse:
        return "inconclusive", f"{what} inconclusive: {text}"
    return "pass", text
