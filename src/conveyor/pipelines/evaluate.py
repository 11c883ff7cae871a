"""Evaluation: holdout metrics, the champion on the same holdout, and behavioural checks.

A behavioural check perturbs one numeric feature of every holdout row and asks whether the
prediction moves the way the config says it should (e.g. more debt, more risk). A model that
fails one is not signed or registered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from conveyor.pipelines.train import features_frame
from conveyor.policies.project import LOWER_IS_BETTER, ProjectConfig

__all__ = [
    "BehaviourResult",
    "Evaluation",
    "behaviour_checks",
    "calibration_error",
    "evaluate_model",
    "evaluation_plots",
    "gain_interval",
    "holdout_metrics",
    "score",
    "weakest_cases",
]

_BEHAVIOUR_ROWS = 2_000
RESAMPLES = 1_000  # paired bootstrap resamples of the holdout for the gain's 95% interval
ECE_BINS = 10  # equal-width bins of predicted probability for the expected calibration error


@dataclass(frozen=True)
class BehaviourResult:
    feature: str
    direction: str
    delta: float
    share: float  # of rows that moved the expected way or stayed
    mean_change: float
    passed: bool


@dataclass(frozen=True)
class Evaluation:
    """How the candidate did on the holdout, and how the champion did on the same rows."""

    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    champion_version: str | None
    behaviour: list[BehaviourResult] = field(default_factory=list)
    holdout_rows: int = 0
    weakest: list[dict[str, Any]] = field(default_factory=list)  # the holdout rows it got most wrong

    @property
    def behaviour_passed(self) -> bool:
        return all(b.passed for b in self.behaviour)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "behaviour_passed": self.behaviour_passed}


def score(model: Any, config: ProjectConfig, features: pd.DataFrame) -> np.ndarray:
    """The model's risk score per row: P(positive class) for binary classification, else the prediction."""
    if config.task == "classification":
        proba = model.predict_proba(features)
        return proba[:, 1] if proba.shape[1] == 2 else proba
    return np.asarray(model.predict(features), dtype=float)


def holdout_metrics(model: Any, config: ProjectConfig, holdout: pd.DataFrame) -> dict[str, float]:
    """The task's holdout metrics of ``model``: roc_auc, average_precision, accuracy, f1, log_loss,
    brier and ece (expected calibration error) for binary classification (ece on the top class for
    more classes); rmse, mae and r2 for regression."""
    from sklearn import metrics as m

    x, y = features_frame(config, holdout), holdout[config.target].to_numpy()
    if config.task == "regression":
        predicted = score(model, config, x)
        return {
            "rmse": float(np.sqrt(m.mean_squared_error(y, predicted))),
            "mae": float(m.mean_absolute_error(y, predicted)),
            "r2": float(m.r2_score(y, predicted)),
        }
    proba, labels = model.predict_proba(x), model.predict(x)
    out = {
        "accuracy": float(m.accuracy_score(y, labels)),
        "log_loss": float(m.log_loss(y, proba, labels=model.classes_)),
    }
    if proba.shape[1] == 2:
        positive = proba[:, 1]
        out |= {
            "roc_auc": float(m.roc_auc_score(y, positive)),
            "average_precision": float(m.average_precision_score(y, positive)),
            "f1": float(m.f1_score(y, labels, pos_label=model.classes_[1])),
            "brier": float(m.brier_score_loss(y, positive, pos_label=model.classes_[1])),
            "ece": calibration_error(y == model.classes_[1], positive),
        }
    else:
        out |= {
            "roc_auc": float(m.roc_auc_score(y, proba, multi_class="ovr", labels=model.classes_)),
            "f1": float(m.f1_score(y, labels, average="macro")),
            "ece": calibration_error(labels == y, proba.max(axis=1)),  # of the top class
        }
    return out


def calibration_error(outcome: np.ndarray, probability: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: over ``bins`` equal-width bins of predicted probability, the
    rows' share of each bin times the gap between its mean prediction and its observed rate (0 for
    a model whose 0.3s happen 30% of the time)."""
    outcome, probability = np.asarray(outcome, dtype=float), np.asarray(probability, dtype=float)
    which = np.minimum((probability * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(outcome[inside].mean() - probability[inside].mean())
    return float(total)


def gain_interval(
    model: Any,
    champion: Any,
    config: ProjectConfig,
    holdout: pd.DataFrame,
    metric: str,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float] | None:
    """The 95% paired-bootstrap interval of the candidate's gain over the champion on ``metric``
    (positive is better, whichever way the metric points), both scored on the same resampled rows;
    None for a metric this task does not have or a multiclass target."""
    from sklearn import metrics as m

    x, y = features_frame(config, holdout), holdout[config.target].to_numpy()
    lower = metric in LOWER_IS_BETTER
    if config.task == "regression":
        scorers: dict[str, Any] = {
            "rmse": lambda t, s, _: np.sqrt(m.mean_squared_error(t, s)),
            "mae": lambda t, s, _: m.mean_absolute_error(t, s),
            "r2": lambda t, s, _: m.r2_score(t, s),
        }
        scored = [(np.asarray(mdl.predict(x), dtype=float), None) for mdl in (model, champion)]
    else:
        if len(model.classes_) != 2:
            return None
        positive = model.classes_[1]
        scorers = {
            "roc_auc": None,  # by draw counts, below
            "average_precision": lambda t, s, _: m.average_precision_score(t, s, pos_label=positive),
            "log_loss": lambda t, s, _: m.log_loss(t, s, labels=model.classes_),
            "brier": lambda t, s, _: m.brier_score_loss(t, s, pos_label=positive),
            "ece": lambda t, s, _: calibration_error(t == positive, s),
            "accuracy": lambda t, _, labels: m.accuracy_score(t, labels),
            "f1": lambda t, _, labels: m.f1_score(t, labels, pos_label=positive, zero_division=0),
        }
        scored = [(mdl.predict_proba(x)[:, 1], mdl.predict(x)) for mdl in (model, champion)]
    if metric not in scorers:
        return None
    metric_of = scorers[metric]
    rng = np.random.default_rng(seed)
    gains = np.full(resamples, np.nan)
    if metric == "roc_auc":  # the default metric, by counts: 1,000 resamples of 14,000 rows in ~1 s, not ~20 s
        positive_rows = (y == model.classes_[1]).astype(float)
        aucs = [_AucByCounts(s, positive_rows) for s, _ in scored]
    for i in range(resamples):
        rows = rng.integers(0, len(y), len(y))
        if metric == "roc_auc":
            counts = np.bincount(rows, minlength=len(y)).astype(float)
            ours, theirs = (auc(counts) for auc in aucs)
            if np.isnan(ours):
                continue  # a resample with one class defines no AUC: left out
        else:
            if config.task == "classification" and len(np.unique(y[rows])) < 2:
                continue
            ours, theirs = (
                metric_of(y[rows], s[rows], None if labels is None else labels[rows]) for s, labels in scored
            )
        gains[i] = theirs - ours if lower else ours - theirs
    if np.isnan(gains).all():
        return None
    low, high = np.nanpercentile(gains, [2.5, 97.5])
    return float(low), float(high)


class _AucByCounts:
    """ROC AUC of ``scores`` on a resample given as how often each row was drawn: the Mann-Whitney
    statistic (ties count a half, as scikit-learn's does) from sums over the rows sorted once."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray) -> None:
        _, self.group = np.unique(scores, return_inverse=True)  # rows of equal score share a group, in score order
        self.positive = positive
        self.groups = int(self.group.max()) + 1

    def __call__(self, counts: np.ndarray) -> float:
        pos = np.bincount(self.group, weights=counts * self.positive, minlength=self.groups)
        neg = np.bincount(self.group, weights=counts * (1 - self.positive), minlength=self.groups)
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos == 0 or total_neg == 0:
            return float("nan")
        below = np.cumsum(neg) - neg  # negatives scored strictly lower than each group
        return float((pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg))


def evaluation_plots(model: Any, config: ProjectConfig, holdout: pd.DataFrame, folder: Path) -> list[Path]:
    """PNG plots of the holdout for the run's record: ROC, calibration and confusion matrix for a
    binary classifier; predicted against actual and the residuals for a regressor."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, PredictionErrorDisplay, RocCurveDisplay

    x, y = features_frame(config, holdout), holdout[config.target].to_numpy()
    folder.mkdir(parents=True, exist_ok=True)
    title = f"{config.model_name}: holdout of {len(holdout):,} rows"
    plots: dict[str, Any] = {}
    if config.task == "regression":
        predicted = score(model, config, x)
        plots["predicted-vs-actual"] = lambda ax: PredictionErrorDisplay.from_predictions(
            y, predicted, kind="actual_vs_predicted", ax=ax
        )
        plots["residuals"] = lambda ax: PredictionErrorDisplay.from_predictions(
            y, predicted, kind="residual_vs_predicted", ax=ax
        )
    else:
        if len(model.classes_) == 2:
            positive = model.predict_proba(x)[:, 1]
            plots["roc"] = lambda ax: RocCurveDisplay.from_predictions(y, positive, pos_label=model.classes_[1], ax=ax)
            plots["calibration"] = lambda ax: CalibrationDisplay.from_predictions(
                y, positive, n_bins=10, pos_label=model.classes_[1], ax=ax
            )
        plots["confusion"] = lambda ax: ConfusionMatrixDisplay.from_predictions(y, model.predict(x), ax=ax)
    written = []
    for name, draw in plots.items():
        figure, ax = plt.subplots(figsize=(5, 4), dpi=100)
        try:
            draw(ax)
            ax.set_title(f"{title} ({name})", fontsize=9)
            figure.tight_layout()
            figure.savefig(folder / f"{name}.png")
            written.append(folder / f"{name}.png")
        finally:
            plt.close(figure)
    return written


def behaviour_checks(model: Any, config: ProjectConfig, holdout: pd.DataFrame) -> list[BehaviourResult]:
    """Run the config's directional checks on up to 2,000 holdout rows."""
    if not config.behaviour:
        return []
    rows = holdout.sample(n=min(_BEHAVIOUR_ROWS, len(holdout)), random_state=0)
    base_x = features_frame(config, rows)
    base = score(model, config, base_x)
    results = []
    for check in config.behaviour:
        moved_x = base_x.copy()
        moved_x[check.feature] = moved_x[check.feature] + check.delta
        change = score(model, config, moved_x) - base
        signed = change if check.direction == "increase" else -change
        share = float(np.mean(signed >= -1e-9))
        mean_change = float(np.mean(change))
        results.append(
            BehaviourResult(
                check.feature,
                check.direction,
                check.delta,
                share,
                mean_change,
                passed=share >= check.min_share and float(np.mean(signed)) > 0,
            )
        )
    return results


def evaluate_model(
    model: Any,
    config: ProjectConfig,
    holdout: pd.DataFrame,
    champion: tuple[str, Any] | None,
    gain_metric: str | None = None,
) -> Evaluation:
    """Holdout metrics for the candidate and (if there is one) the champion, plus behaviour checks;
    with ``gain_metric`` (the promotion policy's ``beat_champion.metric``) the champion's metrics also
    carry the 95% interval of the candidate's gain on it, as ``gain_low_<metric>`` / ``gain_high_<metric>``."""
    champion_metrics = holdout_metrics(champion[1], config, holdout) if champion else None
    if champion and champion_metrics is not None and gain_metric:
        interval = gain_interval(model, champion[1], config, holdout, gain_metric)
        if interval is not None:
            champion_metrics |= {f"gain_low_{gain_metric}": interval[0], f"gain_high_{gain_metric}": interval[1]}
    return Evaluation(
        metrics=holdout_metrics(model, config, holdout),
        champion_metrics=champion_metrics,
        champion_version=champion[0] if champion else None,
        behaviour=behaviour_checks(model, config, holdout),
        holdout_rows=len(holdout),
        weakest=weakest_cases(model, config, holdout),
    )


WEAKEST = 10  # holdout rows an evaluation page shows


def weakest_cases(
    model: Any, config: ProjectConfig, holdout: pd.DataFrame, count: int = WEAKEST
) -> list[dict[str, Any]]:
    """The ``count`` holdout rows the model got most wrong: for a classifier, the lowest probability
    given to the true class; for a regressor, the largest absolute error. Each with its entity,
    time, features, the expected and the predicted value."""
    x, y = features_frame(config, holdout), holdout[config.target].to_numpy()
    if config.task == "regression":
        predicted = np.asarray(model.predict(x), dtype=float)
        loss = np.abs(predicted - y.astype(float))
        shown: list[Any] = [round(float(p), 4) for p in predicted]
    else:
        proba = model.predict_proba(x)
        column = {c: i for i, c in enumerate(model.classes_)}
        true = np.array([proba[i, column[v]] if v in column else 0.0 for i, v in enumerate(y)])
        loss = -np.log(np.clip(true, 1e-15, 1.0))
        labels = model.predict(x)
        shown = [f"{_plain(label)} (p(true) {t:.3f})" for label, t in zip(labels, true, strict=True)]
    order = np.argsort(-loss, kind="stable")[:count]
    rows = holdout.reset_index(drop=True)
    return [
        {
            "entity": _plain(rows.loc[i, config.entity_key]) if config.entity_key in rows else None,
            "time": str(rows.loc[i, config.event_timestamp]) if config.event_timestamp in rows else None,
            "expected": _plain(y[i]),
            "predicted": shown[i],
            "loss": round(float(loss[i]), 4),
            "features": {name: _plain(x.iloc[i][name]) for name in x.columns},
        }
        for i in (int(j) for j in order)
    ]


def _plain(value: Any) -> Any:
    """A numpy or pandas scalar as the JSON value it is (a missing one as null)."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and np.isnan(value) else value
