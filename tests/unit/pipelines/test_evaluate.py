"""Holdout metrics and behavioural checks of a fitted pipeline."""

from __future__ import annotations

from pathlib import Path

from pipelines.data import read_data
from pipelines.evaluate import behaviour_checks, holdout_metrics
from pipelines.train import build_pipeline, features_frame, split_by_time
from policies.project import ProjectConfig


def test_metrics_and_behaviour_checks_of_a_trained_pipeline(loans: Path, config: ProjectConfig) -> None:
    frame = read_data(loans, config)
    train, holdout = split_by_time(config, frame)
    model = build_pipeline(config).fit(features_frame(config, train), train[config.target])
    metrics = holdout_metrics(model, config, holdout)
    assert {"roc_auc", "log_loss", "accuracy", "f1", "brier", "average_precision"} <= set(metrics)
    assert 0.5 < metrics["roc_auc"] <= 1
    checks = behaviour_checks(model, config, holdout)
    assert len(checks) == len(config.behaviour) and all(0 <= c.share <= 1 for c in checks)
