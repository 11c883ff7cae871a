"""The fair peer of `conveyor train`: the same library calls, made by a plain script, no Conveyor.

    .venv/bin/python bench/bare_train.py PROJECT_FOLDER WORK_FOLDER

Read the CSV (pandas), validate it with the project's suite through a Great Expectations
checkpoint that also renders Data Docs, join features point in time with Feast (local provider,
file offline store), fit the configured scikit-learn pipeline on the earlier rows, score the
holdout, log run, dataset and model to MLflow (explicit signature and requirements), sign the
model's files with model-signing (EC key), register it with an alias. What Conveyor adds on top
(hashing, ledger events, provenance, re-verification before registering, behavioural checks) is
what the ratio measures.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import yaml

root, work = Path(sys.argv[1]), Path(sys.argv[2])
work.mkdir(parents=True, exist_ok=True)
config = yaml.safe_load((root / "conveyor.yaml").read_text())
entity, at, target = config["entity_key"], config["event_timestamp"], config["target"]
numeric, categorical = config["features"]["numeric"], config["features"]["categorical"]
columns = [entity, at, target, *numeric, *categorical]

import pandas as pd

frame = pd.read_csv(root / config["data"], usecols=columns, low_memory=False)
frame[at] = pd.to_datetime(frame[at], utc=True, format="mixed")

# -- Great Expectations: the suite, one checkpoint with Data Docs --------------------------------
import great_expectations as gx
from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults
from great_expectations.expectations.registry import get_expectation_impl

site = {
    "class_name": "SiteBuilder",
    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(work / "docs")},
}
context = gx.get_context(
    project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False), data_docs_sites={"s": site}
    ),
    mode="ephemeral",
)
batch = context.data_sources.add_pandas("p").add_dataframe_asset("d").add_batch_definition_whole_dataframe("all")
document = json.loads((root / "policies" / "expectations" / f"{config['model_name']}.json").read_text())
suite = gx.ExpectationSuite(name="suite")
for item in document["expectations"]:
    suite.add_expectation(get_expectation_impl(item["type"])(**item.get("kwargs", {})))
suite = context.suites.add(suite)
definition = context.validation_definitions.add(gx.ValidationDefinition(data=batch, suite=suite, name="v"))
checkpoint = context.checkpoints.add(
    gx.Checkpoint(
        name="c",
        validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["s"])],
    )
)
assert checkpoint.run(batch_parameters={"dataframe": frame}).success

# -- Feast: apply, point-in-time join -------------------------------------------------------------
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, String

repo = work / "feast"
(repo / "data").mkdir(parents=True, exist_ok=True)
features = frame[[entity, at, *numeric, *categorical]].copy()
features[entity] = features[entity].astype(str)
features[categorical] = features[categorical].astype(object)
features.to_parquet(repo / "data" / "features.parquet", index=False)
(repo / "feature_store.yaml").write_text(
    f"project: bare\nregistry: {repo}/registry.db\nprovider: local\noffline_store:\n  type: file\n"
    f"online_store:\n  type: sqlite\n  path: {repo}/online.db\nentity_key_serialization_version: 3\n"
)
store = FeatureStore(repo_path=str(repo))
key = Entity(name=entity, join_keys=[entity], value_type=ValueType.STRING)
view = FeatureView(
    name="features",
    entities=[key],
    ttl=timedelta(days=config.get("feature_ttl_days", 30)),
    schema=[*(Field(name=c, dtype=Float64) for c in numeric), *(Field(name=c, dtype=String) for c in categorical)],
    source=FileSource(name="source", path=str(repo / "data" / "features.parquet"), timestamp_field=at),
)
store.apply([key, view])
labels = frame[[entity, at, target]].copy()
labels[entity] = labels[entity].astype(str)
training = store.get_historical_features(
    entity_df=labels, features=[f"features:{c}" for c in [*numeric, *categorical]]
).to_df()

# -- scikit-learn: the configured pipeline on the earlier rows ------------------------------------
from sklearn.metrics import roc_auc_score

from conveyor.pipelines.train import build_pipeline, features_frame, split_by_time
from conveyor.policies.project import load_project

project = load_project(root / "conveyor.yaml", check_data=False)
train, holdout = split_by_time(project, training)
model = build_pipeline(project).fit(features_frame(project, train), train[target])
auc = roc_auc_score(holdout[target], model.predict_proba(features_frame(project, holdout))[:, 1])

# -- MLflow: run, dataset, model, registration ------------------------------------------------------
import mlflow
import mlflow.sklearn
from mlflow.models import infer_signature

mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
experiment = mlflow.create_experiment("bare", artifact_location=(work / "artifacts").as_uri())
with mlflow.start_run(experiment_id=experiment):
    mlflow.log_params(config["estimator"].get("params", {}))
    mlflow.log_input(
        mlflow.data.from_pandas(train, source=str(root / config["data"]), targets=target), context="training"
    )
    mlflow.log_metric("holdout_roc_auc", auc)
    sample = features_frame(project, train).head(200)
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        signature=infer_signature(sample, model.predict_proba(sample)),
        pip_requirements=["scikit-learn", "pandas"],
        pyfunc_predict_fn="predict_proba",
    )
folder = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(work / "model")))

# -- model-signing: sign every file with an EC key -----------------------------------------------
import model_signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
(work / "key.pem").write_bytes(pem)
model_signing.signing.Config().use_elliptic_key_signer(private_key=work / "key.pem").sign(folder, work / "model.sig")

mlflow.MlflowClient().create_registered_model("bare")
version = mlflow.MlflowClient().create_model_version("bare", info.model_uri)
mlflow.MlflowClient().set_registered_model_alias("bare", "candidate", version.version)
print(f"bare: registered version {version.version}, holdout roc_auc {auc:.4f}, {len(training):,} rows joined")
