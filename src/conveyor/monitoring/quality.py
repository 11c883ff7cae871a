"""Quality once ground truth arrives: labels joined to the predictions they judge.

A labels file holds the project's entity key, event timestamp and target (and, when it holds
every column of the project too, it is labelled data a retraining can learn from). Each label joins
the latest logged prediction for its entity at or before the label's event time, within the
policy's tolerance; a prediction's time is the event time the client sent with the row, or else
the time of the request. Quality is then the policy's metric over the joined rows, per model version.

Where the data had no event time of its own (``conveyor init`` generated one: the config's
``generated``), labels need none: each joins the latest prediction for its entity, whenever it was
made. A generated entity key (row numbers) is asked of labels all the same: it is the only key,
and it joins only where clients sent it with their requests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from conveyor.policies.drift import Quality
from conveyor.policies.errors import DataInvalid
from conveyor.policies.project import ProjectConfig

__all__ = ["QualityResult", "join_labels", "quality_of", "read_labels"]

_MOMENT = "datetime64[ns, UTC]"


@dataclass
class QualityResult:
    status: Literal["breach", "ok", "not_enough_data", "undefined"]
    metric: str
    bound: str
    version: str  # the champion's version, which the verdict is about
    value: float | None
    labelled: int
    per_version: dict[str, dict[str, float | None]] = field(default_factory=dict)
    reason: str | None = None  # why the metric is undefined on these labels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.status == "undefined":
            return f"{self.metric} is undefined on the {self.labelled:,} labelled predictions of version {self.version}: {self.reason}"
        if self.value is None:
            return f"not enough labelled predictions of version {self.version}: {self.labelled} (policy: {self.bound})"
        verdict = "below the floor" if self.status == "breach" else "within the policy"
        return f"{self.metric} {self.value:.4f} over {self.labelled:,} labelled predictions of version {self.version}: {verdict} ({self.bound})"


def read_labels(path: Path, project: ProjectConfig) -> tuple[pd.DataFrame, bool]:
    """The labels in ``path`` (CSV or Parquet) and whether they are complete training rows."""
    if not path.is_file():
        raise DataInvalid(f"No labels file at {path}.", hint="Give the path of a CSV or Parquet file.")
    try:
        frame = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:
        raise DataInvalid(
            f"{path} cannot be read as {'Parquet' if path.suffix.lower() in ('.parquet', '.pq') else 'CSV'}: {exc}".replace(
                "\n", " "
            ),
            hint="Labels are a CSV or Parquet file with the entity key, event timestamp and target.",
        ) from None
    untimed = project.event_timestamp in project.generated and project.event_timestamp not in frame.columns
    keys = [project.entity_key, *([] if untimed else [project.event_timestamp]), project.target]
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        named = ", ".join(keys)
        hint = (
            f"Labels need {named} (the project config's entity key{'' if untimed else ', event timestamp'} and target)."
        )
        if project.entity_key in project.generated and project.entity_key in missing:
            hint += (
                f" `{project.entity_key}` numbers the rows of the prepared data (`conveyor init` made it): a label "
                f"joins a prediction by it only where the client sent `{project.entity_key}` with the request."
            )
        raise DataInvalid(f"{path} lacks the column(s) {', '.join(missing)}.", hint=hint)
    if untimed:  # no time of the data's own: the label joins the entity's latest prediction, made before now
        frame = frame.assign(**{project.event_timestamp: pd.Timestamp.now(tz="UTC")})
        return _checked(frame, path, project), False
    times = pd.to_datetime(frame[project.event_timestamp], utc=True, errors="coerce", format="mixed")
    bad = int(times.isna().sum() + frame[project.entity_key].isna().sum() + frame[project.target].isna().sum())
    if bad or frame.empty:
        raise DataInvalid(
            f"{path} has {'no rows' if frame.empty else f'{bad} empty or unreadable key, time or target value(s)'}.",
            hint="Every label needs an entity, a parseable event time and a target value.",
        )
    frame = frame.assign(**{project.event_timestamp: times})
    return _checked(frame, path, project), all(c in frame.columns for c in project.features.all)


def _checked(frame: pd.DataFrame, path: Path, project: ProjectConfig) -> pd.DataFrame:
    bad = int(frame[project.entity_key].isna().sum() + frame[project.target].isna().sum())
    if bad or frame.empty:
        raise DataInvalid(
            f"{path} has {'no rows' if frame.empty else f'{bad} empty key or target value(s)'}.",
            hint="Every label needs an entity and a target value.",
        )
    return frame


def join_labels(
    labels: pd.DataFrame, log: pd.DataFrame, project: ProjectConfig, tolerance_hours: float
) -> pd.DataFrame:
    """Each label with the prediction it judges (``request_id``, ``version``, ``prediction``...); unmatched labels dropped."""
    entity, at, target = project.entity_key, project.event_timestamp, project.target
    untimed = at in project.generated  # the data has no time: the entity's latest prediction, whenever it was
    left = pd.DataFrame({"entity": labels[entity].astype(str), "label_time": labels[at], "label": labels[target]})
    columns = ["request_id", "row", "time", "version", "prediction", "served_by", "entity"]
    if log.empty or "entity" not in log.columns or log["entity"].isna().all():
        return pd.DataFrame(columns=[*columns, "label_time", "label"])
    right = log.loc[log["entity"].notna(), [*columns, "event_time"]].copy()
    sent = pd.to_datetime(right.pop("event_time"), utc=True, errors="coerce", format="mixed")
    right["prediction_time"] = sent.fillna(pd.to_datetime(right["time"], utc=True)).astype(_MOMENT)
    left["label_time"] = left["label_time"].astype(_MOMENT)  # one resolution on both sides, as merge_asof needs
    joined = pd.merge_asof(
        left.sort_values("label_time"),
        right.sort_values("prediction_time"),
        left_on="label_time",
        right_on="prediction_time",
        by="entity",
        direction="backward",
        tolerance=None if untimed else pd.Timedelta(hours=tolerance_hours),
    )
    return joined.dropna(subset=["request_id"]).reset_index(drop=True)


def quality_of(joined: pd.DataFrame, project: ProjectConfig, policy: Quality, champion: str) -> QualityResult:
    """The policy's metric per version; the verdict is on the champion's predictions. A metric the
    labels cannot define (one class only, for a ranking metric) is the verdict "undefined", with the
    reason, never a NaN: nothing downstream has to know that NaN is not a number."""
    per_version: dict[str, dict[str, float | None]] = {}
    reasons = {}
    for version, rows in joined.groupby("version"):
        value, reasons[str(version)] = _metric(
            policy.metric, rows["label"].to_numpy(), rows["prediction"].to_numpy(dtype=float)
        )
        per_version[str(version)] = {"rows": float(len(rows)), policy.metric: value}
    mine = per_version.get(champion)
    labelled = int(mine["rows"] or 0) if mine else 0
    if labelled < policy.min_labelled or mine is None:
        return QualityResult("not_enough_data", policy.metric, policy.describe(), champion, None, labelled, per_version)
    value = mine[policy.metric]
    if value is None:
        return QualityResult(
            "undefined", policy.metric, policy.describe(), champion, None, labelled, per_version, reasons[champion]
        )
    return QualityResult(
        "breach" if policy.breached(value) else "ok",
        policy.metric,
        policy.describe(),
        champion,
        value,
        labelled,
        per_version,
    )


def _metric(name: str, truth: np.ndarray, predicted: np.ndarray) -> tuple[float | None, str | None]:
    """``name`` of scores ``predicted`` against ``truth``, or ``(None, why)`` where it is undefined."""
    import warnings

    classes = np.unique(truth[~pd.isna(truth)])
    if name in CLASS_METRICS and len(classes) < 2:
        shown = ", ".join(map(str, classes[:1])) or "none"
        return None, f"every label is one class ({shown}); {name} needs both classes among the labels"
    if name == "r2" and len(truth) < 2:
        return None, "r2 needs at least two labels"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's UndefinedMetricWarning: we say it ourselves
        try:
            value = _compute(name, truth, predicted)
        except ValueError as exc:
            return None, str(exc).splitlines()[0]
    if not np.isfinite(value):
        return None, f"{name} is not finite on these labels"
    return value, None


# Metrics of a class label against a probability: undefined with one class.
CLASS_METRICS = frozenset({"roc_auc"})


def _compute(name: str, truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn import metrics as m

    if name == "roc_auc":
        return float(m.roc_auc_score(truth, predicted))
    if name == "accuracy":
        return float(m.accuracy_score(truth, predicted >= 0.5))
    if name == "f1":
        return float(m.f1_score(truth, predicted >= 0.5, zero_division=np.nan))
    if name == "log_loss":
        return float(m.log_loss(truth, np.clip(predicted, 1e-15, 1 - 1e-15), labels=[0, 1]))
    if name == "brier":
        return float(m.brier_score_loss(truth, predicted))
    if name == "rmse":
        return float(np.sqrt(m.mean_squared_error(truth, predicted)))
    if name == "mae":
        return float(m.mean_absolute_error(truth, predicted))
    return float(m.r2_score(truth, predicted))
