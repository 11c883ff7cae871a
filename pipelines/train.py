"""Training: the configured estimator behind a standard preprocessing step, tracked in MLflow.

Rows are split by event time: the latest ``split.test_fraction`` is the holdout, so the model
is judged on a future it has not seen. The MLflow run records the parameters, the input
dataset (under its content address), and the model with an explicit signature and pip
requirements (inferring requirements costs seconds per run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from policies.errors import DataInvalid
from policies.project import ProjectConfig

__all__ = ["TrainedModel", "build_pipeline", "features_frame", "split_by_time", "train_model"]


@dataclass(frozen=True)
class TrainedModel:
    """A fitted model, where MLflow keeps it, and the rows held out to judge it."""

    run_id: str
    model_id: str
    model_uri: str
    estimator: Any
    holdout: pd.DataFrame
    train_rows: int
    cutoff: str  # the first holdout event time


def features_frame(config: ProjectConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """The model's input columns with their serving types: numbers as float, categories as text."""
    features = pd.DataFrame(index=frame.index)
    for column in config.features.numeric:
        features[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in config.features.categorical:
        values = frame[column]
        features[column] = values.astype(str).where(values.notna(), None).astype(object)
    return features


def split_by_time(config: ProjectConfig, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): the holdout is the latest ``test_fraction`` of rows by event time."""
    ordered = frame.sort_values([config.event_timestamp, config.entity_key], kind="stable").reset_index(drop=True)
    cut = round(len(ordered) * (1 - config.split.test_fraction))
    if cut < 10 or len(ordered) - cut < 10:
        raise DataInvalid(
            f"Too few rows to train and hold out ({len(ordered)} rows, test_fraction {config.split.test_fraction}).",
            hint="Provide more data (at least a few hundred rows) or change `split.test_fraction`.",
        )
    return ordered.iloc[:cut], ordered.iloc[cut:]


def build_pipeline(config: ProjectConfig) -> Any:
    """Impute and encode the configured columns, then the configured estimator."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    steps = []
    if config.features.numeric:
        steps.append(
            ("numeric", SimpleImputer(strategy="median", keep_empty_features=True), list(config.features.numeric))
        )
    if config.features.categorical:
        categorical = Pipeline(
            [
                ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                ("encode", OneHotEncoder(handle_unknown="ignore", min_frequency=10, sparse_output=False)),
            ]
        )
        steps.append(("categorical", categorical, list(config.features.categorical)))
    return Pipeline([("prepare", ColumnTransformer(steps)), ("model", config.estimator.build())])


def train_model(
    config: ProjectConfig,
    training_set: pd.DataFrame,
    *,
    data_digest: str,
    data_path: Path,
    training_digest: str,
    artifact_root: Path,
    tags: dict[str, str],
) -> TrainedModel:
    """Fit on the earlier rows, log the run and the model to MLflow."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # e.g. "pip version unresolved": uv venvs have no pip
    train, holdout = split_by_time(config, training_set)
    x_train, y_train = features_frame(config, train), train[config.target]
    if config.task == "classification" and y_train.nunique() < 2:
        raise DataInvalid(
            f"The training rows have a single value of `{config.target}`: nothing to learn.",
            hint="Check the target column, or provide data with both outcomes.",
        )
    pipeline = build_pipeline(config).fit(x_train, y_train)

    experiment = _experiment(config.model_name, artifact_root)
    with mlflow.start_run(experiment_id=experiment, tags=tags) as run:
        mlflow.log_params({f"estimator.{k}": v for k, v in config.estimator.params.items()})
        mlflow.log_params(
            {
                "estimator.class": config.estimator.class_path,
                "split.test_fraction": config.split.test_fraction,
                "train_rows": len(train),
                "holdout_rows": len(holdout),
            }
        )
        dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]
            train,
            source=str(data_path),
            name=data_path.name,
            targets=config.target,
            digest=data_digest.split(":", 1)[1][:36],  # MLflow keeps 36 characters; the full one is a tag
        )
        mlflow.log_input(
            dataset,
            context="training",
            tags={"conveyor.data_digest": data_digest, "conveyor.training_set": training_digest},
        )
        predict_fn = "predict_proba" if config.task == "classification" else "predict"
        sample = x_train.head(200)
        signature = infer_signature(sample, getattr(pipeline, predict_fn)(sample))
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=signature,
            pyfunc_predict_fn=predict_fn,
            pip_requirements=_requirements(),
            skops_trusted_types=_trusted_types(pipeline),
            metadata={"conveyor": input_contract(config, x_train, pipeline)},
        )
    cutoff = holdout[config.event_timestamp].iloc[0]
    return TrainedModel(run.info.run_id, info.model_id, info.model_uri, pipeline, holdout, len(train), str(cutoff))


_MAX_CATEGORIES = 1_000  # a column with more distinct values is served unchecked (an identifier, not a category)


def input_contract(config: ProjectConfig, x_train: pd.DataFrame, model: Any) -> dict[str, Any]:
    """What the service holds requests and answers to, beyond the signature's types: each
    categorical column's values as seen in training, and the classes of a classifier."""
    categories = {}
    for column in config.features.categorical:
        values = sorted({str(v) for v in x_train[column].dropna().unique()})
        if len(values) <= _MAX_CATEGORIES:
            categories[column] = values
    contract: dict[str, Any] = {"categories": categories}
    if config.task == "classification":
        contract["classes"] = [v.item() if hasattr(v, "item") else v for v in model.classes_]
    return contract


def _experiment(name: str, artifact_root: Path) -> str:
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(name, artifact_location=(artifact_root / name).as_uri())


def _requirements() -> list[str]:
    return [
        f"{name}=={metadata.version(name)}" for name in ("scikit-learn", "pandas", "numpy", "scipy", "skops", "mlflow")
    ]


def _trusted_types(pipeline: Any) -> list[str]:
    """The classes skops must be told to trust to load this pipeline: all of them are sklearn's."""
    import tempfile

    import skops.io

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.skops"
        skops.io.dump(pipeline, path)
        return sorted(skops.io.get_untrusted_types(file=path))
