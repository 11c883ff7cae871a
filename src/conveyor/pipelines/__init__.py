"""Conveyor's flows and their stages: one module per stage, a plain function each, run by one flow
skeleton (``pipelines.flows``). Its public names load on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor._exports import exports as _exports

if TYPE_CHECKING:
    from conveyor.pipelines.flows import Record, Recorded, Stages, run_as_configured
    from conveyor.pipelines.llm.flow import ReleaseOutcome, release_flow, run_release
    from conveyor.pipelines.retraining import DriftOutcome, LabelsOutcome, add_labels, check_drift, retrain
    from conveyor.pipelines.training import TrainingOutcome, run_training, training_flow
    from conveyor.pipelines.triggers import TriggerOutcome
    from conveyor.pipelines.validate import ValidationResult

__all__ = [
    "DriftOutcome",
    "LabelsOutcome",
    "Record",
    "Recorded",
    "ReleaseOutcome",
    "Stages",
    "TrainingOutcome",
    "TriggerOutcome",
    "ValidationResult",
    "add_labels",
    "check_drift",
    "release_flow",
    "retrain",
    "run_as_configured",
    "run_release",
    "run_training",
    "training_flow",
]

__getattr__ = _exports(
    __name__,
    {
        "conveyor.pipelines.flows": ["Record", "Recorded", "Stages", "run_as_configured"],
        "conveyor.pipelines.training": ["TrainingOutcome", "run_training", "training_flow"],
        "conveyor.pipelines.llm.flow": ["ReleaseOutcome", "release_flow", "run_release"],
        "conveyor.pipelines.retraining": ["DriftOutcome", "LabelsOutcome", "add_labels", "check_drift", "retrain"],
        "conveyor.pipelines.triggers": ["TriggerOutcome"],
        "conveyor.pipelines.validate": ["ValidationResult"],
    },
)
