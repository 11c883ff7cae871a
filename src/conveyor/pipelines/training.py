"""The training flow: version → validate → features → train → evaluate → sign → register.

Each stage is a plain function of the stage modules that returns its result and the ledger event
that records it (``pipelines.flows.Recorded``). ``run_training`` runs the stages through the one
flow skeleton (``pipelines.flows.Stages``): directly, or each as a Prefect task in a real flow
run; ``training_flow`` runs where the Workspace says (``pipelines.flows.run_as_configured``), so a
laptop does not pay for starting a temporary Prefect API. Any stage that refuses stops the run
before anything is registered; the ledger keeps the refusal.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conveyor.pipelines.data import read_data
from conveyor.pipelines.datasets import DatasetRef, relative_to_root, version_dataset
from conveyor.pipelines.evaluate import Evaluation, evaluate_model, evaluation_plots
from conveyor.pipelines.evaluation_page import behaviour_reasons, refresh_evaluation_page, write_evaluation_page
from conveyor.pipelines.features import (
    FeastStores,
    FeatureSet,
    build_training_set,
    feature_spec,
    materialize_latest,
    open_store,
)
from conveyor.pipelines.flows import (
    TRAINING_DEPLOYMENT,
    Record,
    Recorded,
    Runner,
    Stages,
    Summary,
    direct,
    run_as_configured,
    stage_summary,
)
from conveyor.pipelines.register import register_and_record
from conveyor.pipelines.sign import SignedModel, code_state, project_signer, sign_and_attest, signed_record
from conveyor.pipelines.train import TrainedModel, name_run, run_name, train_model
from conveyor.pipelines.validate import ValidationResult, suite_path, validate_data
from conveyor.policies.errors import DataInvalid, GateFailed, PolicyInvalid, ValidationFailed
from conveyor.policies.project import ProjectConfig, read_columns
from conveyor.registry.digests import canonical_json, file_digest, json_digest
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger, utc_now
from conveyor.registry.loading import load_estimator, verified_copy
from conveyor.registry.models import fetch_model
from conveyor.registry.provenance import Material
from conveyor.registry.registration import staging_folder
from conveyor.registry.signing import model_digest, model_files
from conveyor.registry.workspace import Workspace

__all__ = ["STAGES", "TrainingOutcome", "run_training", "training_flow", "validate_only"]


@dataclass(frozen=True)
class TrainingOutcome:
    """What a successful run produced."""

    name: str
    version: str
    alias: str
    version_digest: str
    model_digest: str
    data_digest: str
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    champion_version: str | None
    run_id: str
    validation_report: str
    rows_in: int
    rows_out: int
    behaviour: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the user should know (e.g. a split not in time)


@dataclass
class _Run:
    """The state one run carries from stage to stage (where things are: its Workspace)."""

    ws: Workspace
    config: ProjectConfig  # the project config, with ``data`` replaced when the run was given a file
    ledger: Ledger
    started: str
    config_digest: str  # the project config file, hashed once per run
    cause: str | None = None  # digest of what started this run (a retraining trigger), recorded as an input
    staging: Path = Path()  # this run's own folder for the model's files, removed when the run ends

    @property
    def root(self) -> Path:
        return self.ws.root

    @property
    def home(self) -> Path:
        return self.ws.home


STAGES = ("version", "read", "validate", "features", "train", "evaluate", "sign", "register")


def run_training(
    ws: Workspace, data: str | Path | None = None, *, cause: str | None = None, runner: Runner = direct
) -> TrainingOutcome:
    """Run every stage in order through ``runner``; raises the first stage's refusal.

    ``data`` replaces the config's data file; ``cause`` is the digest of what started the run
    (a retraining trigger), recorded as an input of the trained model."""
    config = _load(ws, data)
    with ws.ledger() as ledger, staging_folder(ws.home) as staging:
        run = _Run(ws, config, ledger, utc_now(), file_digest(ws.project_file), cause, staging)
        stages = Stages(ledger, runner, STAGES)
        dataset: DatasetRef = stages("version", version_dataset, config.data, ledger, root=run.root)
        frame = stages("read", read_data, config.data, config)
        validation: ValidationResult = stages("validate", _validate, run, dataset, frame)
        features: FeatureSet = stages("features", _features, run, dataset, validation, frame)
        trained: _Trained = stages("train", _train, run, dataset, features)
        evaluation: Evaluation = stages("evaluate", _evaluate, run, features, trained)
        signed: SignedModel = stages("sign", _sign, run, dataset, validation, features, trained)
        outcome: TrainingOutcome = stages(
            "register", _register, run, dataset, trained, evaluation, signed, validation, features
        )
        return outcome


def validate_only(ws: Workspace, data: str | Path | None = None) -> ValidationResult:
    """Version and validate the data, as the first stages of a run do; raises if it fails."""
    config = _load(ws, data)
    with ws.ledger() as ledger:
        run = _Run(ws, config, ledger, utc_now(), file_digest(ws.project_file))
        dataset = version_dataset(config.data, ledger, root=run.root)
        validation: ValidationResult = Stages(ledger)(
            "validate", _validate, run, dataset, read_data(config.data, config)
        )
        return validation


def training_flow(ws: Workspace, data: str | Path | None = None, *, cause: str | None = None) -> TrainingOutcome:
    """The run as the Workspace says: on a worker of the work pool (the server profile); a Prefect
    flow run in this process, each stage a task, when a Prefect server is set or ``flows:
    prefect``; otherwise the same stages in this process."""
    named = run_name(ws.project().model_name, retraining=cause is not None)  # what the Prefect UI lists
    given = str(Path(data).absolute()) if data else None
    return run_as_configured(
        ws,
        lambda: run_training(ws, data, cause=cause),
        flow="training",
        parameters={"data": given, "cause": cause},
        named=named,
        deployment=TRAINING_DEPLOYMENT,
    )


# -- the stages ------------------------------------------------------------------------------


def _load(ws: Workspace, given: str | Path | None) -> ProjectConfig:
    ws.bind_mlflow()  # this run's registry, whatever the environment says
    config = ws.project(check_data=True)
    if given:
        data = Path(given).absolute()
        if not data.is_file():
            raise DataInvalid(f"No data file at {data}.", hint="Check the path given to --data.")
        config = config.model_copy(update={"data": data})
        config.check_columns(read_columns(data))
    return config


def _validate(run: _Run, data: DatasetRef, frame: Any) -> Recorded[ValidationResult]:
    suite = suite_path(run.config, run.root)
    result = validate_data(frame, run.config, suite, run.home / "reports")
    record = Record(
        EventKind.DATA_VALIDATED,
        inputs={"data": data.digest, "suite": result.suite_digest},
        outputs=[result.digest],
        details={
            "success": result.success,
            "evaluated": result.evaluated,
            "failed": len(result.failures),
            "report": str(result.report),
            "suite": str(suite),
        },
    )
    if result.success:
        return Recorded(result, (record,))
    lines = "; ".join(f.describe() for f in result.failures)
    refusal = ValidationFailed(
        f"{data.path.name} failed {len(result.failures)} of {result.evaluated} expectations: {lines}.",
        hint=f"Nothing was trained. Fix the data, or review the suite ({suite}). Report: {result.page}.",
    )
    return Recorded(result, (record,), refusal)


def _features(run: _Run, data: DatasetRef, validation: ValidationResult, frame: Any) -> Recorded[FeatureSet]:
    config = run.config
    settings = run.ws.settings
    stores = FeastStores(settings.feature_registry_url, settings.redis_url, settings.feature_engine)
    store, view = open_store(config, run.home / "feast", frame, run.ws.project_file, stores)
    features = build_training_set(store, view, config, frame, run.home / "features")
    online = materialize_latest(store, view, frame, config)
    record = Record(
        EventKind.FEATURES_BUILT,
        inputs={"data": data.digest, "validation": validation.digest, "feature_definitions": features.spec_digest},
        outputs=[features.digest],
        details={
            "rows_in": features.rows_in,
            "rows_out": features.rows_out,
            "dropped": features.dropped,
            "training_set": str(features.path),
            "feature_view": feature_spec(config)["view"],
            "online_store": "redis" if stores.redis_url else "sqlite",
            "online_entities": online,
        },
    )
    return Recorded(features, (record,))


@dataclass(frozen=True)
class _Trained:
    """The fitted model, and its files as MLflow stores them (fetched once, signed later)."""

    model: TrainedModel
    folder: Path
    files: dict[str, str]
    digest: str


def _train(run: _Run, data: DatasetRef, features: FeatureSet) -> Recorded[_Trained]:
    tags = {
        "conveyor.data_digest": data.digest,
        "conveyor.training_set": features.digest,
        **({"conveyor.cause": run.cause} if run.cause else {}),
    }
    trained = train_model(
        run.config,
        features.frame,
        data_digest=data.digest,
        data_path=data.path,
        training_digest=features.digest,
        artifact_root=run.home / "mlartifacts",
        tags=tags,
    )
    folder = fetch_model(trained.model_uri, run.staging / trained.model_id)
    files = model_files(folder)
    digest = model_digest(files)
    record = Record(
        EventKind.MODEL_TRAINED,
        inputs={"training_set": features.digest, "config": run.config_digest, "cause": run.cause},
        outputs=[digest, *files.values()],
        details={
            "run_id": trained.run_id,
            "model_id": trained.model_id,
            "estimator": run.config.estimator.class_path,
            "train_rows": trained.train_rows,
            "holdout_from": trained.cutoff,
            "files": files,
            **({"cause": run.cause} if run.cause else {}),
        },
    )
    return Recorded(_Trained(trained, folder, files, digest), (record,))


def _evaluate(run: _Run, features: FeatureSet, trained: _Trained) -> Recorded[Evaluation]:
    model = trained.model
    evaluation = evaluate_model(model.estimator, run.config, model.holdout, _champion(run), _gain_metric(run))
    client = run.ws.mlflow()
    client.log_batch(model.run_id, metrics=_metrics(evaluation))
    if evaluation.champion_version:
        client.set_tag(model.run_id, "conveyor.champion_version", evaluation.champion_version)
    report = run.home / "reports" / "evaluation" / f"{run.config.model_name}-{model.run_id}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_bytes(canonical_json(evaluation.to_dict()))
    plots = evaluation_plots(model.estimator, run.config, model.holdout, report.with_suffix(""))
    client.log_artifact(model.run_id, str(report), "evaluation")  # the record, beside the model, in MLflow's UI
    for plot in plots:
        client.log_artifact(model.run_id, str(plot), "evaluation")
    failed = [b for b in evaluation.behaviour if not b.passed]
    page = write_evaluation_page(
        run.ws.reports,
        model=run.config.model_name,
        version=None,
        run_id=model.run_id,
        report=evaluation.to_dict(),
        llm=False,
        gate=(not failed, behaviour_reasons([asdict(b) for b in evaluation.behaviour])),
    )
    record = Record(
        EventKind.MODEL_EVALUATED,
        inputs={"model": trained.digest, "training_set": features.digest},
        outputs=[file_digest(report)],
        details={
            "metrics": evaluation.metrics,
            "champion": evaluation.champion_version,
            "champion_metrics": evaluation.champion_metrics,
            "behaviour_passed": not failed,
            "holdout_rows": evaluation.holdout_rows,
            "holdout_from": model.cutoff,
            "report": str(report),
        },
    )
    if not failed:
        return Recorded(evaluation, (record,))
    reasons = "; ".join(
        f"raising {b.feature} by {b.delta:g} should {b.direction} the prediction, "
        f"but did so for {b.share:.0%} of rows (mean change {b.mean_change:+.4f})"
        for b in failed
    )
    refusal = GateFailed(
        f"The model failed {len(failed)} behavioural check(s): {reasons}.",
        hint=f"Nothing was signed or registered. The evaluation's page: {page}. Look at the features and "
        "estimator, or at the checks under `behaviour` in the project config.",
    )
    return Recorded(evaluation, (record,), refusal)


def _sign(
    run: _Run, data: DatasetRef, validation: ValidationResult, features: FeatureSet, trained: _Trained
) -> Recorded[SignedModel]:
    config, root = run.config, run.root
    policy = run.ws.signing()
    code = code_state(root)
    lock = root / "uv.lock"
    materials = [
        Material(relative_to_root(data.path, root), data.digest),
        Material(relative_to_root(validation.report, root), validation.digest),
        Material("feature-definitions", features.spec_digest),
        Material("training-set", features.digest),
        Material(relative_to_root(run.ws.project_file, root), run.config_digest),
        *([Material("uv.lock", file_digest(lock))] if lock.is_file() else []),
        *([Material(f"git+{root.name}", f"gitCommit:{code.commit}")] if code.commit != "unknown" else []),
    ]
    parameters = {
        "model_name": config.model_name,
        "task": config.task,
        "estimator": config.estimator.class_path,
        "estimator_params": config.estimator.params,
        "split": config.split.model_dump(),
        "params_digest": json_digest(config.estimator.params),
        "data": relative_to_root(data.path, root),
    }
    model = trained.model
    details = {
        "invocationId": model.run_id,
        "startedOn": run.started,
        "finishedOn": utc_now(),
        "mlflow_run_id": model.run_id,
        "mlflow_model_id": model.model_id,
        "code_commit": code.commit,
        "code_dirty": code.dirty,
        "validation_success": validation.success,
    }
    signer = project_signer(policy, root, run.ws.keys_dir)
    signed = sign_and_attest(
        trained.folder, trained.files, model.model_id, signer, materials=materials, parameters=parameters, run=details
    )
    return Recorded(signed, (signed_record(signed, code, {"data": data.digest, "validation": validation.digest}),))


def _register(
    run: _Run,
    data: DatasetRef,
    trained: _Trained,
    evaluation: Evaluation,
    signed: SignedModel,
    validation: ValidationResult,
    features: FeatureSet,
) -> TrainingOutcome:
    tags = {
        "conveyor.data_digest": data.digest,
        "conveyor.bundle_digest": signed.bundle_digest,
        "conveyor.provenance_digest": signed.provenance_digest,
        "conveyor.run_id": trained.model.run_id,
        "conveyor.validation_digest": validation.digest,
        "conveyor.training_set": features.digest,
    }
    version, verified = register_and_record(
        run.ws,
        run.ledger,
        run.config.model_name,
        trained.model.model_uri,
        tags=tags,
        bundle_digest=signed.bundle_digest,
        provenance_digest=signed.provenance_digest,
    )
    client = run.ws.mlflow()
    for report in (validation.report, validation.page):  # what the data passed
        client.log_artifact(trained.model.run_id, str(report), "validation")
    name_run(client, trained.model.run_id, version.name, version.version, version.alias)
    refresh_evaluation_page(run.ws, version.name, version.version)
    return TrainingOutcome(
        name=version.name,
        version=version.version,
        alias=version.alias,
        version_digest=version.digest,
        model_digest=str(verified.model_digest),
        data_digest=data.digest,
        metrics=evaluation.metrics,
        champion_metrics=evaluation.champion_metrics,
        champion_version=evaluation.champion_version,
        run_id=trained.model.run_id,
        validation_report=str(validation.report),
        rows_in=features.rows_in,
        rows_out=features.rows_out,
        behaviour=[asdict(b) for b in evaluation.behaviour],
        warnings=list(trained.model.warnings),
    )


# -- helpers ---------------------------------------------------------------------------------


def _champion(run: _Run) -> tuple[str, Any] | None:
    """The current champion, verified into a private copy and loaded from it (None when there is
    none); one that does not verify stops the run before anything is signed or registered."""
    name = run.config.model_name
    version = run.ws.champion(name)
    if version is None:
        return None
    with verified_copy(run.ws, f"{name}/{version}", run.ledger, what="The champion") as (_, files):
        return version, load_estimator(files, run.ws.loadable_types())


def _gain_metric(run: _Run) -> str | None:
    """The metric the promotion policy compares with the champion (None: it compares none, or there
    is no readable policy yet: training does not need one, and `conveyor promote` says what is wrong)."""
    try:
        rule = run.ws.policy("promotion").value.beat_champion
    except PolicyInvalid:
        return None
    return rule.metric if rule is not None else None


def _metrics(evaluation: Evaluation) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    found = [Metric(f"holdout_{k}", v, now, 0) for k, v in evaluation.metrics.items()]
    if evaluation.champion_metrics:
        found += [Metric(f"champion_{k}", v, now, 0) for k, v in evaluation.champion_metrics.items()]
    return found


# -- what the Prefect UI shows of each stage ------------------------------------------------


@stage_summary.register
def _(result: ValidationResult) -> Summary:
    met = result.evaluated - len(result.failures)
    rows = [("report", f"`{result.report}`"), ("page", f"`{result.page}`"), ("suite", f"`{result.suite_digest}`")]
    rows += [(f"failed: {f.expectation}", f.describe()) for f in result.failures]
    return f"{met} of {result.evaluated} expectations met", rows


@stage_summary.register
def _(result: FeatureSet) -> Summary:
    headline = f"{result.rows_out:,} training rows from {result.rows_in:,} ({result.dropped:,} dropped)"
    return headline, [
        ("training set", f"`{result.path}`"),
        ("digest", f"`{result.digest}`"),
        ("feature definitions", f"`{result.spec_digest}`"),
    ]


@stage_summary.register
def _(result: _Trained) -> Summary:
    model = result.model
    rows = [("MLflow run", f"`{model.run_id}`"), ("model", f"`{model.model_id}`"), ("digest", f"`{result.digest}`")]
    rows += [("warning", w) for w in model.warnings]
    return f"fitted on {model.train_rows:,} rows, held out from {model.cutoff}", rows


@stage_summary.register
def _(result: Evaluation) -> Summary:
    champion = result.champion_metrics or {}
    against = f" (champion v{result.champion_version})" if result.champion_version else ""
    headline = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()) + against
    rows = [
        (name, f"{value:.4f}" + (f" (champion {champion[name]:.4f})" if name in champion else ""))
        for name, value in result.metrics.items()
    ]
    rows += [(k, f"{v:+.4f}") for k, v in champion.items() if k.startswith("gain_")]
    rows += [(f"behaviour: {b.feature}", "passed" if b.passed else "failed") for b in result.behaviour]
    return headline + f" on {result.holdout_rows:,} held-out rows", rows


@stage_summary.register
def _(result: SignedModel) -> Summary:
    return f"signed by {result.key_fingerprint}", [
        ("model", f"`{result.model_digest}`"),
        ("Sigstore bundle", f"`{result.bundle_digest}`"),
        ("SLSA provenance", f"`{result.provenance_digest}`"),
    ]


@stage_summary.register
def _(result: TrainingOutcome) -> Summary:
    rows = [("version digest", f"`{result.version_digest}`"), ("MLflow run", f"`{result.run_id}`")]
    rows += [("warning", w) for w in result.warnings]
    return f"{result.name} version {result.version} registered as @{result.alias}", rows
