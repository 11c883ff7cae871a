"""The promotion policy (``policies/promotion.yaml``) and the pure decision it drives.

``decide_promotion(candidate, champion, policy)`` looks only at facts gathered beforehand
(signature verified, validation passed, metrics on one holdout, ...) and returns a ``Decision``
with every reason; moving aliases and recording the outcome happen elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conveyor.policies.project import LOWER_IS_BETTER

__all__ = [
    "LLM_METRICS",
    "LLM_SCORERS",
    "BeatChampion",
    "Bound",
    "Candidate",
    "Decision",
    "LlmGate",
    "PromotionPolicy",
    "Requirements",
    "decide_promotion",
]

# What an LLM release's offline evaluation measures (pipelines/llm/evaluate.py), and its scorers.
LLM_SCORERS = ("format", "content", "refusal", "length", "retrieval")
LLM_METRICS = {
    "pass_rate": "share of cases that pass every check they name",
    "format_pass_rate": "share of format cases (regex, JSON schema) that pass",
    "content_pass_rate": "share of content cases (contains, not_contains) that pass",
    "refusal_rate": "share of cases to refuse (red team) that were refused or blocked",
    "over_refusal_rate": "share of cases to answer that were refused or blocked",
    "length_pass_rate": "share of cases with a token budget that kept it",
    "ttft_p95_ms": "95th percentile time to first token, this machine",
    "latency_p95_ms": "95th percentile time to the whole answer, this machine",
    "mean_output_tokens": "mean tokens per answer",
    "retrieval_hit_rate": "share of cases naming their source documents whose passages included one",
}
LOWER_IS_BETTER_LLM = frozenset({"over_refusal_rate", "ttft_p95_ms", "latency_p95_ms", "mean_output_tokens"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bound(_Strict):
    """An absolute limit on one holdout metric."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some_limit(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("give `min`, `max` or both")
        return self


class BeatChampion(_Strict):
    """The candidate must beat the champion on ``metric`` by at least ``min_delta`` (same holdout)."""

    metric: str
    min_delta: float = 0.0


class Requirements(_Strict):
    trusted_signature: Literal[True] = True  # not optional: an unverified model is never promoted
    validation_passed: bool = True
    clean_tree: bool = False  # provenance must show a committed, clean work tree


class LlmGate(_Strict):
    """What an LLM release must show on its evaluation sets: at build (thresholds) and at promotion
    (thresholds and, against the champion on the same sets, ``beat_champion``)."""

    scorers: tuple[str, ...] = LLM_SCORERS
    thresholds: dict[str, Bound] = Field(default_factory=dict)
    beat_champion: BeatChampion | None = None
    max_weights_mb: float | None = Field(None, gt=0)

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in value if s not in LLM_SCORERS]
        if unknown:
            raise ValueError(
                f"unknown scorer(s) {', '.join(map(repr, unknown))}: the scorers are {', '.join(LLM_SCORERS)}"
            )
        if not value:
            raise ValueError("name at least one scorer")
        return value

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, value: dict[str, Bound]) -> dict[str, Bound]:
        unknown = [m for m in value if m not in LLM_METRICS]
        if unknown:
            raise ValueError(
                f"unknown metric(s) {', '.join(map(repr, unknown))}: the metrics are {', '.join(LLM_METRICS)}"
            )
        return value

    @model_validator(mode="after")
    def _beat_known(self) -> LlmGate:
        if self.beat_champion is not None and self.beat_champion.metric not in LLM_METRICS:
            raise ValueError(
                f"`beat_champion.metric` {self.beat_champion.metric!r} is not one of {', '.join(LLM_METRICS)}"
            )
        return self

    def as_policy(
        self, targets: tuple[Literal["canary", "champion"], ...], require: Requirements | None = None
    ) -> PromotionPolicy:
        """The same checks, in the shape ``decide_promotion`` judges (size is the release's, weights
        included); ``require`` is the policy's own (a clean tree in CI holds for releases too), its
        evaluation sets standing for the data that must have passed validation."""
        return PromotionPolicy(
            require=(require or Requirements()).model_copy(update={"validation_passed": True}),
            thresholds=self.thresholds,
            beat_champion=self.beat_champion,
            max_model_size_mb=self.max_weights_mb,
            targets=targets,
        )


class PromotionPolicy(_Strict):
    """What a model must show to be promoted to canary or champion."""

    require: Requirements = Requirements()
    thresholds: dict[str, Bound] = Field(default_factory=dict)
    beat_champion: BeatChampion | None = None
    max_model_size_mb: float | None = Field(None, gt=0)
    targets: tuple[Literal["canary", "champion"], ...] = ("canary", "champion")
    llm: LlmGate | None = None  # LLM releases are judged by this section instead


@dataclass(frozen=True)
class Candidate:
    """The facts about one model version that the policy judges."""

    name: str
    version: str
    signature_verified: bool
    validation_passed: bool
    clean_tree: bool | None  # None: not built from a git work tree
    size_bytes: int
    metrics: dict[str, float]
    # The champion's metrics on the candidate's own holdout (None: there is no champion)
    champion_metrics: dict[str, float] | None = None


@dataclass(frozen=True)
class Decision:
    ok: bool
    reasons: list[str] = field(default_factory=list)  # why not, or (when ok) what was checked


def decide_promotion(
    candidate: Candidate,
    champion: str | None,
    policy: PromotionPolicy,
    *,
    target: str = "champion",
    canary_passed: bool = False,
) -> Decision:
    """Judge ``candidate`` against ``policy`` (and the champion, if ``champion`` names one) for
    ``target``; ``canary_passed``: the candidate's live canary analysis has just passed."""
    refusals: list[str] = []
    passed: list[str] = []

    def check(ok: bool, good: str, bad: str) -> None:
        (passed if ok else refusals).append(good if ok else bad)

    check(
        candidate.signature_verified,
        "signature and provenance verified by a trusted signer",
        "signature or provenance did not verify against a trusted signer",
    )
    if policy.require.validation_passed:
        check(candidate.validation_passed, "its data passed validation", "its data did not pass validation")
    if policy.require.clean_tree:
        check(
            candidate.clean_tree is True,
            "built from a clean, committed work tree",
            "not built from a clean, committed work tree (provenance records uncommitted changes or no commit)",
        )
    if policy.max_model_size_mb is not None:
        size_mb = candidate.size_bytes / 1e6
        check(
            size_mb <= policy.max_model_size_mb,
            f"size {size_mb:.2f} MB within {policy.max_model_size_mb:g} MB",
            f"size {size_mb:.2f} MB exceeds the maximum {policy.max_model_size_mb:g} MB",
        )
    for metric, bound in sorted(policy.thresholds.items()):
        value = candidate.metrics.get(metric)
        if value is None:
            refusals.append(f"metric {metric} was not recorded for this version")
            continue
        if bound.min is not None:
            check(
                value >= bound.min,
                f"{metric} {value:.4f} >= {bound.min:g}",
                f"{metric} {value:.4f} is below the minimum {bound.min:g}",
            )
        if bound.max is not None:
            check(
                value <= bound.max,
                f"{metric} {value:.4f} <= {bound.max:g}",
                f"{metric} {value:.4f} is above the maximum {bound.max:g}",
            )
    if policy.beat_champion is not None:
        if champion is None:
            passed.append("no champion yet: nothing to beat")
        elif champion == candidate.version:
            refusals.append(f"version {candidate.version} is already the champion")
        else:
            _beat(candidate, champion, policy.beat_champion, refusals, passed, target, canary_passed)
    return Decision(ok=not refusals, reasons=refusals or passed)


def _beat(
    candidate: Candidate,
    champion: str,
    rule: BeatChampion,
    refusals: list[str],
    passed: list[str],
    target: str,
    canary_passed: bool,
) -> None:
    """Judge the gain by its 95% bootstrap interval on the holdout when training recorded one:
    above ``min_delta`` beats, below does not, across it is inconclusive (noise cannot be told from
    a gain), which may go to canary for live traffic to decide but not straight to champion."""
    ours = candidate.metrics.get(rule.metric)
    known = candidate.champion_metrics or {}
    theirs = known.get(rule.metric)
    if ours is None or theirs is None:
        refusals.append(f"{rule.metric} of the candidate and of champion v{champion} on the same holdout is not known")
        return
    gain = theirs - ours if rule.metric in LOWER_IS_BETTER | LOWER_IS_BETTER_LLM else ours - theirs
    low, high = known.get(f"gain_low_{rule.metric}"), known.get(f"gain_high_{rule.metric}")
    if low is None or high is None:  # no interval (an LLM release, a multiclass target): the point difference
        if gain >= rule.min_delta:
            passed.append(
                f"{rule.metric} {ours:.4f} beats champion v{champion} ({theirs:.4f}) by {gain:+.4f} (needs {rule.min_delta:+g})"
            )
        else:
            refusals.append(
                f"{rule.metric} {ours:.4f} does not beat champion v{champion} ({theirs:.4f}) by {rule.min_delta:g}: change {gain:+.4f}"
            )
        return
    figures = (
        f"{rule.metric} {ours:.4f} vs champion v{champion} {theirs:.4f}: gain {gain:+.4f}, "
        f"95% interval [{low:+.4f}, {high:+.4f}]"
    )
    if low >= rule.min_delta:
        passed.append(f"{rule.metric} beats champion v{champion}: {figures} clears {rule.min_delta:+g}")
    elif high < rule.min_delta:
        refusals.append(f"{rule.metric} does not beat champion v{champion}: {figures} is below {rule.min_delta:+g}")
    elif target == "canary":
        passed.append(f"{figures} spans {rule.min_delta:+g}: inconclusive on the holdout, live canary traffic decides")
    elif canary_passed:
        passed.append(f"{figures} spans {rule.min_delta:+g}: inconclusive on the holdout, its live canary passed")
    else:
        refusals.append(
            f"{figures} spans {rule.min_delta:+g}: inconclusive on the holdout; promote it to canary "
            "first and let live traffic decide"
        )
