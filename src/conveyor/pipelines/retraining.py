"""The loop's return path: drift and quality checks, the trigger, and the retraining flow.

``check_drift`` measures the champion's training set against a window of its inference log and
``add_labels`` joins ground truth to logged predictions; a breach of ``policies/drift.yaml`` asks
``decide_trigger`` whether to retrain (cooldown, one retraining per breach window). A retraining
that may start is recorded (``retraining.triggered``); the caller starts it (``pipelines.loop``):
in this process, as the check's subflow, or, with a Prefect server, by an event that the
``retraining`` deployment's trigger turns into a flow run.

``retrain`` trains on the newest labelled data version (the project's data plus every complete
labels file added since, as one derived, content-addressed file), through every gate of the
training flow, and asks the promotion policy to make the result the canary: never the champion.
The trigger's digest is an input of the new model's training event, so lineage leads from the
model back to the drift report that caused it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from conveyor.monitoring.drift import DriftResult, finish_drift_page, measure_drift
from conveyor.monitoring.quality import QualityResult, join_labels, quality_of, read_labels
from conveyor.monitoring.trigger import Breach, TriggerDecision
from conveyor.pipelines.data import read_data
from conveyor.pipelines.datasets import DatasetRef, relative_to_root, version_dataset
from conveyor.pipelines.flows import Runner, direct
from conveyor.pipelines.release import score_champion
from conveyor.pipelines.training import run_training
from conveyor.pipelines.triggers import (
    Started,
    TriggerOutcome,
    claim,
    completed,
    decide,
    failed,
    moment,
    past_triggers,
    record_trigger,
    skipped,
    started,
    version_digest,
    window_of,
)
from conveyor.policies.drift import DriftPolicy
from conveyor.policies.errors import ConveyorError, NothingToActOn, PolicyInvalid
from conveyor.policies.project import ProjectConfig
from conveyor.registry.digests import file_digest
from conveyor.registry.events import EventKind, input_of, typed
from conveyor.registry.inference_log import read_log
from conveyor.registry.ledger import Ledger
from conveyor.registry.models import experiment
from conveyor.registry.release import promote
from conveyor.registry.workspace import Workspace

__all__ = [
    "DriftOutcome",
    "LabelsOutcome",
    "add_labels",
    "check_drift",
    "labelled_data",
    "log_drift_run",
    "record_drift_checked",
    "retrain",
]

log = logging.getLogger("conveyor.monitoring")


@dataclass
class LabelsOutcome:
    file: str
    digest: str
    rows: int
    matched: int
    complete: bool  # every feature column present: labelled data a retraining can learn from
    joined: str | None
    quality: QualityResult
    decision: TriggerDecision | None = None
    started: Started | None = None
    retraining: TriggerOutcome | None = None


@dataclass
class DriftOutcome:
    result: DriftResult
    decision: TriggerDecision | None = None
    started: Started | None = None
    retraining: TriggerOutcome | None = None


# -- checks ------------------------------------------------------------------------------------


def check_drift(ws: Workspace, window: str | None = None, *, start: bool = True) -> DriftOutcome:
    """Measure drift over ``window`` (default: the policy's), record it, and on a breach record the
    retraining trigger (``outcome.started``: the caller starts the retraining)."""
    project, policy = _setup(ws)
    spec = window_of(window or policy.window.default)
    now = datetime.now(UTC)
    with ws.ledger() as ledger:
        result = measure_drift(ledger, ws, project, policy, spec, now)
        decision = None
        if result.status == "drift":
            breach = Breach(
                "drift",
                result.model,
                result.version,
                moment(result.since),
                moment(result.until),
                result.report_digest or "",
                result.describe(),
            )
            decision = _decide(breach, ledger, policy, now, start)
            result.trigger = ("started: " if decision.start else "not started: ") + decision.reason
        finish_drift_page(result, ws.reports)
        record_drift_checked(
            ledger,
            result,
            {"version": result.version_digest, "reference": result.reference_digest, "window": result.window_digest},
            [result.report_digest, result.html_digest, result.snapshot_digest],
        )
        outcome = DriftOutcome(result, decision)
        if decision is not None and decision.start:
            outcome.started = started(ws, record_trigger(ws, ledger, breach, decision))
    log_drift_run(ws, result)
    return outcome


def log_drift_run(ws: Workspace, result: DriftResult) -> str:
    """The check as an MLflow run in the model's experiment, beside the training runs: named by
    model, version and window, the verdict in its tags and description, the shares as metrics and
    Evidently's reports as artifacts. Returns the run's id."""
    import mlflow

    ws.bind_mlflow()
    described = result.describe() + (f"; retraining {result.trigger}" if result.trigger else "")
    with mlflow.start_run(
        experiment_id=experiment(result.model, ws.home / "mlartifacts"),
        run_name=f"drift check {result.model} v{result.version} ({result.window})",
        description=(
            f"Drift check of {result.model} version {result.version}: its training set "
            f"({result.reference_rows:,} rows) against the inference log's {result.window} window "
            f"({result.window_rows:,} rows, {result.since or '-'} to {result.until or '-'}): {described}."
        ),
        tags={
            "conveyor.kind": "drift-check",
            "conveyor.version": result.version,
            "conveyor.verdict": result.status,
            "conveyor.window": result.window,
            **({"conveyor.drifted": ", ".join(result.drifted)} if result.drifted else {}),
        },
    ) as run:
        mlflow.log_metrics(
            {"drift_share": result.share, "drifted_columns": len(result.drifted), "window_rows": result.window_rows}
        )
        for report in (result.report, result.html):
            if report is not None:
                mlflow.log_artifact(str(report), "drift")
    return str(run.info.run_id)


def add_labels(ws: Workspace, path: Path, *, start: bool = True) -> LabelsOutcome:
    """Join the labels in ``path`` to logged predictions, judge quality, and on a breach record the
    retraining trigger (``outcome.started``: the caller starts the retraining)."""
    project, policy = _setup(ws)
    _fits_task(policy.quality.metric, project, ws.policies / "drift.yaml")
    root, home = ws.root, ws.home
    labels, complete = read_labels(path, project)
    name = project.model_name
    champion = ws.champion(name)
    if champion is None:
        raise NothingToActOn(
            f"{name} has no champion whose predictions the labels could judge.",
            hint=f"Promote one first: `conveyor promote {name}/<version> --to champion`.",
        )
    now = datetime.now(UTC)
    with ws.ledger() as ledger:
        details = {"labels_for": name, "complete": complete}
        ref = version_dataset(path.absolute(), ledger, root=root, details=details)
        joined = join_labels(labels, read_log(ws.inference_dir(name)), project, policy.quality.join_tolerance_hours)
        kept, joined_digest = None, None
        if len(joined):
            folder = home / "labels" / name
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / "joined.parquet.partial"
            joined.to_parquet(partial, index=False)
            joined_digest = file_digest(partial)
            kept = folder / f"joined-{joined_digest.split(':')[1][:16]}.parquet"
            partial.replace(kept)
        quality = quality_of(joined, project, policy.quality, champion)
        ledger.append(
            EventKind.LABELS_ADDED,
            inputs={"labels": ref.digest},
            outputs=[joined_digest] if joined_digest else [],
            details={
                "model": name,
                "path": relative_to_root(ref.path, root),
                "rows": len(labels),
                "matched": len(joined),
                "complete": complete,
                "joined": str(kept) if kept else None,
            },
        )
        outcome = LabelsOutcome(
            str(path), ref.digest, len(labels), len(joined), complete, str(kept) if kept else None, quality
        )
        if quality.status == "breach":
            times = pd.to_datetime(joined["time"], utc=True)
            breach = Breach(
                "quality",
                name,
                champion,
                times.min().to_pydatetime(),
                times.max().to_pydatetime(),
                joined_digest or ref.digest,
                quality.describe(),
            )
            outcome.decision = _decide(breach, ledger, policy, now, start)
        ledger.append(
            EventKind.QUALITY_CHECKED,
            inputs={"joined": joined_digest, "version": version_digest(ws, name, champion)},
            outputs=[],
            details={
                "model": name,
                **quality.to_dict(),
                "trigger": None
                if outcome.decision is None
                else ("started: " if outcome.decision.start else "not started: ") + outcome.decision.reason,
            },
        )
        if outcome.decision is not None and outcome.decision.start:
            outcome.started = started(ws, record_trigger(ws, ledger, breach, outcome.decision))
    return outcome


def record_drift_checked(ledger: Ledger, result: Any, inputs: dict[str, str | None], outputs: list[str | None]) -> None:
    """The ``drift.checked`` event of a tabular (``DriftResult``) or an LLM (``LlmTrafficResult``) check."""
    ledger.append(
        EventKind.DRIFT_CHECKED,
        inputs=inputs,
        outputs=[d for d in outputs if d],
        details={
            "model": result.model,
            "version": result.version,
            "status": result.status,
            "window": result.window,
            "window_rows": result.window_rows,
            "since": result.since,
            "until": result.until,
            "share": result.share,
            "drifted": result.drifted,
            "report": str(result.report),
            "html": str(result.html) if result.html else None,
            "snapshot": str(result.snapshot) if result.snapshot else None,
            "trigger": result.trigger,
        },
    )


def _decide(breach: Breach, ledger: Ledger, policy: DriftPolicy, now: datetime, start: bool) -> TriggerDecision:
    return decide(breach, past_triggers(ledger, breach.model), policy, now, start=start, flag="retrain (--no-retrain)")


# -- retraining ------------------------------------------------------------------------------------


def retrain(ws: Workspace, trigger: str, runner: Runner = direct) -> TriggerOutcome:
    """Train on the newest labelled data for ``trigger``; the result may become the canary, never the champion."""
    project, _ = _setup(ws)
    root, home = ws.root, ws.home
    with ws.ledger() as ledger:
        already = claim(ws, ledger, trigger, project.model_name)
        if already:
            return TriggerOutcome("skipped", trigger, already)
        try:
            data = labelled_data(project, ledger, root, home)
            champion = ws.mlflow().get_model_version_by_alias(project.model_name, "champion")
            if data.digest == champion.tags.get("conveyor.data_digest"):
                reason = (
                    f"no labelled data newer than what version {champion.version} was trained on "
                    f"({relative_to_root(data.path, root)}); add labels with `conveyor labels add FILE`"
                )
                return skipped(ledger, trigger, reason, {"data": data.digest}, data=str(data.path))
            trained = run_training(ws, data.path, cause=trigger, runner=runner)
        except ConveyorError as exc:
            return failed(ledger, trigger, exc)
        promotion = promote(ws, f"{trained.name}/{trained.version}", "canary", score_champion=score_champion)
        verdict = (
            "made the canary" if promotion.decision.ok else "registered, but the promotion policy refused it as canary"
        )
        reasons = list(promotion.decision.reasons)
        outcome = TriggerOutcome(
            "completed",
            trigger,
            f"version {trained.version} {verdict}",
            trained.version,
            promotion.decision.ok,
            reasons,
            str(data.path),
        )
        return completed(
            ledger, outcome, trained.version_digest, reasons=reasons, data=relative_to_root(data.path, root)
        )


def labelled_data(project: ProjectConfig, ledger: Ledger, root: Path, home: Path) -> DatasetRef:
    """The newest labelled data version: the project's data plus every complete labels file added, deduplicated.

    With no such labels it is the project's data file itself. Otherwise the union is written once
    under ``home/datasets/`` by content and recorded with the digests it was derived from.
    """
    base = version_dataset(project.data, ledger, root=root)
    added = [
        e
        for e in reversed(ledger.latest([EventKind.LABELS_ADDED], limit=1_000, model=project.model_name))
        if typed(e).complete
    ]
    sources: dict[str, Path] = {}
    for event in added:
        path = Path(typed(event).path)
        path = path if path.is_absolute() else root / path
        digest = input_of(event, "labels")
        if path.is_file() and file_digest(path) == digest and digest != base.digest:
            sources[digest] = path
        else:
            log.warning("labels file %s changed or is gone since it was added; it is not used", path)
    if not sources:
        return base
    frames = [read_data(project.data, project), *(read_data(p, project) for p in sources.values())]
    keys = [project.entity_key, project.event_timestamp]
    union = pd.concat(frames, ignore_index=True).drop_duplicates(keys, keep="last")
    union = union.sort_values([project.event_timestamp, project.entity_key], kind="stable").reset_index(drop=True)
    folder = home / "datasets" / project.model_name
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "labelled.parquet.partial"
    union.to_parquet(partial, index=False)
    path = folder / f"{project.data.stem}-labelled-{file_digest(partial).split(':')[1][:16]}.parquet"
    partial.replace(path)
    return version_dataset(
        path, ledger, root=root, details={"derived_from": [base.digest, *sources], "labels_for": project.model_name}
    )


# -- helpers ---------------------------------------------------------------------------------------


def _setup(ws: Workspace) -> tuple[ProjectConfig, DriftPolicy]:
    ws.bind_mlflow()
    return ws.project(), ws.drift_policy()


_REGRESSION_METRICS = frozenset({"rmse", "mae", "r2"})


def _fits_task(metric: str, project: ProjectConfig, policy_file: Path) -> None:
    """Refuse, before anything is recorded, a quality metric the project's task cannot have."""
    regression = metric in _REGRESSION_METRICS
    if regression == (project.task == "regression"):
        return
    fits = (
        "rmse (max), mae (max) or r2 (min)"
        if project.task == "regression"
        else "roc_auc, accuracy, f1 (min) or log_loss, brier (max)"
    )
    raise PolicyInvalid(
        f"`quality.metric` in {policy_file} is {metric}, a {'regression' if regression else 'classification'} "
        f"metric, but {project.model_name} is a {project.task} project.",
        hint=f"Use {fits}; `conveyor init` writes a drift policy fitted to the task.",
    )
