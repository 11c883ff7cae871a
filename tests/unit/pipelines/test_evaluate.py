"""Holdout metrics and behavioural checks of a fitted pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conveyor.pipelines.data import read_data
from conveyor.pipelines.evaluate import behaviour_checks, gain_interval, holdout_metrics
from conveyor.pipelines.train import build_pipeline, features_frame, split_by_time
from conveyor.policies.project import ProjectConfig


def test_metrics_and_behaviour_checks_of_a_trained_pipeline(loans: Path, config: ProjectConfig) -> None:
    frame = read_data(loans, config)
    train, holdout = split_by_time(config, frame)
    model = build_pipeline(config).fit(features_frame(config, train), train[config.target])
    metrics = holdout_metrics(model, config, holdout)
    assert {"roc_auc", "log_loss", "accuracy", "f1", "brier", "average_precision", "ece"} <= set(metrics)
    assert 0 <= metrics["ece"] < 0.2
    assert 0.5 < metrics["roc_auc"] <= 1
    checks = behaviour_checks(model, config, holdout)
    assert len(checks) == len(config.behaviour) and all(0 <= c.share <= 1 for c in checks)


def test_the_gain_interval_tells_a_real_gain_from_a_twin(loans: Path, config: ProjectConfig) -> None:
    """The same model twice gains nothing, with certainty; a model on one feature is clearly beaten;
    two copies of the model with their scores jittered alike are within noise of each other (the
    +0.0002 AUC of a retraining that learnt nothing new)."""
    frame = read_data(loans, config)
    train, holdout = split_by_time(config, frame)
    x, y = features_frame(config, train), train[config.target]
    model = build_pipeline(config).fit(x, y)
    assert gain_interval(model, model, config, holdout, "roc_auc", resamples=200) == (0.0, 0.0)
    weak = config.model_copy(
        update={
            "features": config.features.model_copy(update={"numeric": config.features.numeric[:1], "categorical": []})
        }
    )
    blind = build_pipeline(weak).fit(features_frame(weak, train), y)

    class OnOneFeature:  # the weak model, given the full feature frame as the candidate is
        classes_ = blind.classes_

        def predict_proba(self, frame):
            return blind.predict_proba(frame[list(weak.features.numeric)])

        def predict(self, frame):
            return blind.predict(frame[list(weak.features.numeric)])

    low, high = gain_interval(model, OnOneFeature(), config, holdout, "roc_auc", resamples=200)
    assert 0 < low <= high  # the full model beats one feature, whatever the resample
    low, high = gain_interval(OnOneFeature(), model, config, holdout, "brier", resamples=200)
    assert low <= high < 0  # and the other way round it loses, lower-is-better turned into a gain

    class Jittered:
        classes_ = model.classes_

        def __init__(self, seed: int) -> None:
            self.noise = np.random.default_rng(seed).normal(0, 0.01, len(holdout))

        def predict_proba(self, frame):
            p = np.clip(model.predict_proba(frame)[:, 1] + self.noise, 0, 1)
            return np.column_stack([1 - p, p])

        def predict(self, frame):
            return model.predict(frame)

    low, high = gain_interval(Jittered(5), Jittered(6), config, holdout, "roc_auc", resamples=200)
    assert low < 0 < high and high - low < 0.05  # noise: a narrow interval that spans no gain


def test_the_auc_by_counts_is_scikit_learn_s_auc_of_the_resample() -> None:
    from sklearn.metrics import roc_auc_score

    from conveyor.pipelines.evaluate import _AucByCounts

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) * 20) / 20  # many ties
    auc = _AucByCounts(scores, y.astype(float))
    for _ in range(20):
        rows = rng.integers(0, 500, 500)
        counts = np.bincount(rows, minlength=500).astype(float)
        assert auc(counts) == pytest.approx(roc_auc_score(y[rows], scores[rows]), abs=1e-12)
    assert np.isnan(auc(np.where(y == 1, 1.0, 0.0)))  # one class drawn: undefined


def test_the_calibration_error_is_zero_when_rates_match_predictions_and_grows_with_overconfidence() -> None:
    import numpy as np

    from conveyor.pipelines.evaluate import calibration_error

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    happened = rng.uniform(0, 1, p.size) < p
    assert calibration_error(happened, p) < 0.01
    overconfident = np.clip(0.5 + 1.6 * (p - 0.5), 0, 1)  # predictions pushed toward 0 and 1
    assert 0.05 < calibration_error(happened, overconfident) < 0.2
    assert calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0
