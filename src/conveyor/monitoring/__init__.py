"""Drift and quality checks over the inference log, and the retraining trigger: for tabular models
and LLM releases alike. Its public names load on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor._exports import exports as _exports

if TYPE_CHECKING:
    from conveyor.monitoring.costs import CostReport, cost_report
    from conveyor.monitoring.drift import DriftResult, WindowCheck, measure_drift
    from conveyor.monitoring.llm_traffic import LlmTrafficResult, compare_traffic
    from conveyor.monitoring.quality import QualityResult, quality_of
    from conveyor.monitoring.trigger import Breach, TriggerDecision, decide_trigger

__all__ = [
    "Breach",
    "CostReport",
    "DriftResult",
    "LlmTrafficResult",
    "QualityResult",
    "TriggerDecision",
    "WindowCheck",
    "compare_traffic",
    "cost_report",
    "decide_trigger",
    "measure_drift",
    "quality_of",
]

__getattr__ = _exports(
    __name__,
    {
        "conveyor.monitoring.drift": ["DriftResult", "WindowCheck", "measure_drift"],
        "conveyor.monitoring.llm_traffic": ["LlmTrafficResult", "compare_traffic"],
        "conveyor.monitoring.quality": ["QualityResult", "quality_of"],
        "conveyor.monitoring.trigger": ["Breach", "TriggerDecision", "decide_trigger"],
        "conveyor.monitoring.costs": ["CostReport", "cost_report"],
    },
)
