"""The drift policy (``policies/drift.yaml``): when traffic has drifted, when quality is too low,
and how often either may start a retraining."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conveyor.policies.loading import load_policy

__all__ = [
    "LLM_DESCRIPTORS",
    "LLM_RATES",
    "QUALITY_METRICS",
    "ColumnTest",
    "Drift",
    "DriftPolicy",
    "LlmDrift",
    "LlmFeedback",
    "LlmMonitoring",
    "Monitor",
    "Quality",
    "Retraining",
    "Window",
    "WindowPolicy",
    "load_drift_policy",
    "parse_window",
]

# Quality metrics a label check can compute, and whether higher is better.
QUALITY_METRICS: dict[str, bool] = {
    "roc_auc": True,
    "accuracy": True,
    "f1": True,
    "log_loss": False,
    "brier": False,
    "rmse": False,
    "mae": False,
    "r2": True,
}
_UNITS = {"m": 60, "h": 3_600, "d": 86_400}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnTest(_Strict):
    method: str = Field(min_length=1)
    threshold: float = Field(gt=0)


class Drift(_Strict):
    share: float = Field(0.3, gt=0, le=1)
    numeric: ColumnTest = ColumnTest(method="ks", threshold=0.05)
    categorical: ColumnTest = ColumnTest(method="chisquare", threshold=0.05)
    columns: dict[str, ColumnTest] = {}


class Window(_Strict):
    """The last ``seconds`` of traffic, or the last ``rows`` logged rows."""

    seconds: int | None = None
    rows: int | None = None

    def describe(self) -> str:
        return f"last {self.rows:,} rows" if self.rows else f"last {_duration(self.seconds or 0)}"


class WindowPolicy(_Strict):
    default: str = "24h"
    min_rows: int = Field(500, ge=1)
    sample_above: int = Field(100_000, ge=1_000)

    @field_validator("default")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_window(value)
        return value


class Quality(_Strict):
    metric: str = "roc_auc"
    min: float | None = None
    max: float | None = None
    min_labelled: int = Field(200, ge=1)
    join_tolerance_hours: float = Field(24, gt=0)

    @model_validator(mode="after")
    def _one_bound(self) -> Quality:
        if self.metric not in QUALITY_METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(QUALITY_METRICS)}")
        if (self.min is None) == (self.max is None):
            raise ValueError("give exactly one of `min` (higher is better) or `max` (lower is better)")
        if QUALITY_METRICS[self.metric] != (self.min is not None):
            better = "higher" if QUALITY_METRICS[self.metric] else "lower"
            raise ValueError(
                f"{self.metric} is {better}-is-better: bound it with `{'min' if better == 'higher' else 'max'}`"
            )
        return self

    def breached(self, value: float) -> bool:
        return value < self.min if self.min is not None else value > (self.max or 0.0)

    def describe(self) -> str:
        return f"{self.metric} >= {self.min:g}" if self.min is not None else f"{self.metric} <= {self.max:g}"


class Retraining(_Strict):
    cooldown_minutes: float = Field(60, ge=0)


class Monitor(_Strict):
    interval_seconds: float = Field(300, gt=0)


LLM_DESCRIPTORS = ("question_length", "answer_length", "completion_tokens", "retrieval_score", "ttft_ms")
LLM_RATES = ("out_of_knowledge", "refused", "blocked", "answer_json")


class LlmDrift(_Strict):
    share: float = Field(0.5, gt=0, le=1)  # drift when at least this share of the descriptors drift
    method: str = "ks"
    threshold: float = Field(0.01, gt=0)
    columns: tuple[str, ...] = ("question_length", "answer_length", "completion_tokens", "retrieval_score")

    @field_validator("columns")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in value if c not in LLM_DESCRIPTORS]
        if unknown or not value:
            raise ValueError(f"descriptors are {', '.join(LLM_DESCRIPTORS)}; got {', '.join(unknown) or 'none'}")
        return value


class LlmFeedback(_Strict):
    min_ratings: int = Field(3, ge=1)  # fewer rated answers than this: no verdict on feedback
    max_negative_share: float = Field(0.5, ge=0, le=1)


class LlmMonitoring(_Strict):
    """An LLM release's live traffic against its own evaluation traffic, and what a breach starts."""

    window: str = "24h"
    min_rows: int = Field(30, ge=1)
    drift: LlmDrift = LlmDrift()
    # A quality breach when one of these rates is above the evaluation's by at least this much,
    # and significantly so (one-sided Fisher exact test at ``significance``).
    rates: dict[str, float] = {"out_of_knowledge": 0.25, "refused": 0.2, "blocked": 0.2}
    significance: float = Field(0.01, gt=0, lt=1)
    feedback: LlmFeedback = LlmFeedback()
    cooldown_minutes: float = Field(60, ge=0)  # at most one re-evaluation, and one rebuild, per champion in this long

    @field_validator("window")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_window(value)
        return value

    @field_validator("rates")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = [r for r in value if r not in LLM_RATES]
        if unknown:
            raise ValueError(f"rates are {', '.join(LLM_RATES)}; got {', '.join(unknown)}")
        if any(not 0 < v <= 1 for v in value.values()):
            raise ValueError("each rate's increase is a share in (0, 1]")
        return value


class DriftPolicy(_Strict):
    drift: Drift = Drift()
    window: WindowPolicy = WindowPolicy()
    quality: Quality = Quality(min=0.75)
    retraining: Retraining = Retraining()
    monitor: Monitor = Monitor()
    llm: LlmMonitoring = LlmMonitoring()


def load_drift_policy(policies: Path) -> DriftPolicy:
    return load_policy(policies / "drift.yaml", DriftPolicy)


def parse_window(text: str) -> Window:
    """``"5000"`` (rows), ``"30m"``, ``"24h"`` or ``"7d"``; a ``ValueError`` says what is expected."""
    spec = text.strip().lower()
    if re.fullmatch(r"[1-9][0-9_]*", spec):
        return Window(rows=int(spec))
    match = re.fullmatch(r"([1-9][0-9]*)\s*([mhd])", spec)
    if not match:
        raise ValueError(f"window {text!r} is neither a row count (5000) nor a duration (30m, 24h, 7d)")
    return Window(seconds=int(match[1]) * _UNITS[match[2]])


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0 and (unit != "d" or seconds >= 172_800):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
