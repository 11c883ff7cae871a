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

from conveyor.policies.errors import DataInvalid
from conveyor.policies.project import ProjectConfig
from conveyor.registry.models import experiment

__all__ = [
    "TrainedModel",
    "build_pipeline",
    "features_frame",
    "name_run",
    "run_name",
    "split_by_time",
    "split_warning",
    "train_model",
]


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
    warnings: tuple[str, ...] = ()  # what the user should know about this run (e.g. a split that is not in time)


def features_frame(config: ProjectConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """The model's input columns as the model takes them: numbers and booleans (1.0/0.0) as float,
    categories as text."""
    features = pd.DataFrame(index=frame.index)
    for column in config.features.numbers:
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


def split_warning(config: ProjectConfig, train: pd.DataFrame, holdout: pd.DataFrame) -> str | None:
    """Why the time split is not a split in time, if it is not.

    Coarse timestamps put every training row at one instant, or many rows on both sides of the cut
    at the same instant (those are then split by entity key, not by time). A tie of fewer than a
    tenth of the holdout's rows is the ordinary edge of a day and says nothing.
    """
    at = config.event_timestamp
    last, first = train[at].iloc[-1], holdout[at].iloc[0]
    tied = int((train[at] == last).sum() + (holdout[at] == last).sum()) if last == first else 0
    if train[at].nunique() > 1 and tied < 0.1 * len(holdout):
        return None
    total = len(train) + len(holdout)
    if train[at].nunique() == 1 and tied == total:
        share = "every row has"
    elif tied:
        share = f"{tied:,} of {total:,} rows (on both sides of the cut) have"
    else:
        share = "every training row has"
    return (
        f"The time split is not a split in time: {share} the event time {last}, so those rows are "
        f"held out by `{config.entity_key}` order, not by time. Give `{at}` finer times, or for data "
        "with no time let `conveyor init --from-data` give each row one in a seeded random order."
    )


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
    if config.features.boolean:
        steps.append(
            (
                "boolean",
                SimpleImputer(strategy="most_frequent", keep_empty_features=True),
                list(config.features.boolean),
            )
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
    warning = split_warning(config, train, holdout)
    if warning:
        logging.getLogger("conveyor").warning(warning)
    x_train, y_train = features_frame(config, train), train[config.target]
    if config.task == "classification" and y_train.nunique() < 2:
        raise DataInvalid(
            f"The training rows have a single value of `{config.target}`: nothing to learn.",
            hint="Check the target column, or provide data with both outcomes.",
        )
    pipeline = build_pipeline(config).fit(x_train, y_train)

    experiment_id = experiment(config.model_name, artifact_root)
    cause = f"retraining ({tags['conveyor.cause'][:19]}…)" if tags.get("conveyor.cause") else "by hand"
    description = (
        f"Training of {config.model_name} ({config.task}, {config.estimator.class_path}) on {data_path.name} "
        f"(`{data_digest[:19]}…`), {cause}: {len(train):,} training rows, {len(holdout):,} held out from "
        f"{holdout[config.event_timestamp].iloc[0]}." + (f"\n\n**Warning:** {warning}" if warning else "")
    )
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name(config.model_name, retraining=bool(tags.get("conveyor.cause"))),
        description=description,
        tags={**tags, **({"conveyor.split_warning": warning} if warning else {})},
    ) as run:
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
        signature = _served_signature(config, infer_signature(sample, getattr(pipeline, predict_fn)(sample)))
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=signature,
            pyfunc_predict_fn=predict_fn,
            pip_requirements=_requirements(),
            skops_trusted_types=_trusted_types(pipeline),
            metadata={"conveyor": _input_contract(config, x_train, pipeline)},
        )
    cutoff = holdout[config.event_timestamp].iloc[0]
    return TrainedModel(
        run.info.run_id,
        info.model_id,
        info.model_uri,
        pipeline,
        holdout,
        len(train),
        str(cutoff),
        (warning,) if warning else (),
    )


def run_name(model: str, *, retraining: bool, version: str | None = None) -> str:
    """What the MLflow and Prefect UIs call a training run: stage, model, version once registered, cause."""
    return f"train {model}{f' v{version}' if version else ''} ({'retraining' if retraining else 'by hand'})"


def name_run(client: Any, run_id: str, model: str, version: str, alias: str) -> None:
    """Once registered, the run says which version it made, in its name and its description."""
    run = client.get_run(run_id)
    retraining = "conveyor.cause" in run.data.tags
    client.set_tag(run_id, "mlflow.runName", run_name(model, retraining=retraining, version=version))
    note = run.data.tags.get("mlflow.note.content", "")
    client.set_tag(run_id, "mlflow.note.content", f"{note}\n\nRegistered as {model} version {version} (@{alias}).")


_MAX_CATEGORIES = 1_000  # a column with more distinct values is served unchecked (an identifier, not a category)


def _served_signature(config: ProjectConfig, signature: Any) -> Any:
    """``signature`` with the boolean features typed ``boolean``: clients send JSON booleans, the
    service hands the model 1.0/0.0 as training did."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    if not config.features.boolean:
        return signature
    booleans = set(config.features.boolean)
    inputs = Schema(
        [
            ColSpec(DataType.boolean if spec.name in booleans else spec.type, spec.name, required=spec.required)
            for spec in signature.inputs.inputs
        ]
    )
    return ModelSignature(inputs=inputs, outputs=signature.outputs, params=signature.params)


def _input_contract(config: ProjectConfig, x_train: pd.DataFrame, model: Any) -> dict[str, Any]:
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
