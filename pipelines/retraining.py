"""The loop's return path: drift and quality checks, the trigger, and the retraining flow.

``check_drift`` measures the champion's training set against a window of its inference log and
``add_labels`` joins ground truth to logged predictions; a breach of ``policies/drift.yaml`` asks
``decide_trigger`` whether to retrain (cooldown, one retraining per breach window). A retraining
that may start is recorded (``retraining.triggered``) and then started: in embedded mode the
check's flow runs the retraining flow itself; with a Prefect server (``PREFECT_API_URL``) it
emits an event that the ``retraining`` deployment's trigger turns into a flow run.

``retrain`` trains on the newest labelled data version (the project's data plus every complete
labels file added since, as one derived, content-addressed file), through every gate of the
training flow, and asks the promotion policy to make the result the canary: never the champion.
The trigger's digest is an input of the new model's training event, so lineage leads from the
model back to the drift report that caused it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from monitoring.drift import DriftResult, measure_drift
from monitoring.quality import QualityResult, join_labels, quality_of, read_labels
from monitoring.trigger import RETRAINING_EVENT, TRIGGERED, Breach, PastTrigger, TriggerDecision, decide_trigger
from pipelines.data import read_data
from pipelines.datasets import DatasetRef, relative_to_root, version_dataset
from pipelines.training import TrainingRequest, run_training
from policies.drift import DriftPolicy, load_drift_policy, parse_window
from policies.errors import ConveyorError, NotFound, PolicyInvalid
from policies.project import ProjectConfig, load_project
from registry.digests import file_digest, json_digest
from registry.inference_log import read_log
from registry.ledger import Ledger
from registry.locks import file_lock

__all__ = ["DriftOutcome", "LabelsOutcome", "RetrainingOutcome", "add_labels", "check_drift", "drift_flow", "labelled_data",
           "retrain", "retraining_flow", "start_retraining"]  # fmt: skip

log = logging.getLogger("conveyor.monitoring")



@dataclass(frozen=True)
class Started:
    """A retraining the trigger allowed: its ledger record and how it was started."""

    trigger: str  # digest of the trigger record
    event: int
    mode: Literal["embedded", "server"]


@dataclass
class RetrainingOutcome:
    status: Literal["completed", "failed", "skipped"]
    trigger: str
    reason: str
    version: str | None = None
    canary: bool = False  # the new version was made the canary
    promotion_reasons: list[str] = field(default_factory=list)
    data: str | None = None  # the data file it trained on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    retraining: RetrainingOutcome | None = None


@dataclass
class DriftOutcome:
    result: DriftResult
    decision: TriggerDecision | None = None
    started: Started | None = None
    retraining: RetrainingOutcome | None = None


# -- checks ------------------------------------------------------------------------------------


def check_drift(request: TrainingRequest, window: str | None = None, *, start: bool = True) -> DriftOutcome:
    """Measure drift over ``window`` (default: the policy's), record it, and start a retraining on a breach."""
    project, policy = _setup(request)
    spec = _window(window or policy.window.default)
    now = datetime.now(UTC)
    with Ledger(request.ledger_url, actor=request.actor) as ledger:
        result = measure_drift(ledger, project, policy, Path(request.home), spec, now)
        decision = None
        if result.status == "drift":
            breach = Breach("drift", result.model, result.version, _at(result.since), _at(result.until),
                            result.report_digest or "", result.describe())  # fmt: skip
            decision = _decide(breach, ledger, policy, now, start)
            result.trigger = ("started: " if decision.start else "not started: ") + decision.reason
        ledger.append(
            "drift.checked",
            inputs=[d for d in (result.version_digest, result.reference_digest, result.window_digest) if d],
            outputs=[d for d in (result.report_digest, result.html_digest, result.snapshot_digest) if d],
            details={"model": result.model, "version": result.version, "status": result.status, "window": result.window,
                     "window_rows": result.window_rows, "since": result.since, "until": result.until, "share": result.share,
                     "drifted": result.drifted, "report": str(result.report), "html": str(result.html) if result.html else None,
                     "snapshot": str(result.snapshot) if result.snapshot else None,
                     "trigger": result.trigger},
        )  # fmt: skip
        outcome = DriftOutcome(result, decision)
        if decision is not None and decision.start:
            outcome.started = _record_trigger(ledger, breach, decision)
    if outcome.started:
        outcome.retraining = start_retraining(request, outcome.started)
    return outcome


def add_labels(request: TrainingRequest, path: Path, *, start: bool = True) -> LabelsOutcome:
    """Join the labels in ``path`` to logged predictions, judge quality, and start a retraining on a breach."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    project, policy = _setup(request)
    root, home = Path(request.root), Path(request.home)
    labels, complete = read_labels(path, project)
    name = project.model_name
    try:
        champion = str(MlflowClient().get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        raise NotFound(f"{name} has no champion whose predictions the labels could judge.",
                       hint=f"Promote one first: `conveyor promote {name}/<version> --to champion`.") from None  # fmt: skip
    now = datetime.now(UTC)
    with Ledger(request.ledger_url, actor=request.actor) as ledger:
        details = {"labels_for": name, "complete": complete}
        ref = version_dataset(path.absolute(), ledger, root=root, details=details)
        joined = join_labels(labels, read_log(home / "inference" / name), project, policy.quality.join_tolerance_hours)
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
        ledger.append("labels.added", inputs=[ref.digest], outputs=[joined_digest] if joined_digest else [],
                      details={"model": name, "path": relative_to_root(ref.path, root), "rows": len(labels),
                               "matched": len(joined), "complete": complete, "joined": str(kept) if kept else None})  # fmt: skip
        outcome = LabelsOutcome(str(path), ref.digest, len(labels), len(joined), complete, str(kept) if kept else None, quality)
        if quality.status == "breach":
            times = pd.to_datetime(joined["time"], utc=True)
            breach = Breach("quality", name, champion, times.min().to_pydatetime(), times.max().to_pydatetime(),
                            joined_digest or ref.digest, quality.describe())  # fmt: skip
            outcome.decision = _decide(breach, ledger, policy, now, start)
        ledger.append("quality.checked", inputs=[d for d in (joined_digest, _version_digest(name, champion)) if d], outputs=[],
                      details={"model": name, **quality.to_dict(),
                               "trigger": None if outcome.decision is None else ("started: " if outcome.decision.start else "not started: ") + outcome.decision.reason})  # fmt: skip
        if outcome.decision is not None and outcome.decision.start:
            outcome.started = _record_trigger(ledger, breach, outcome.decision)
    if outcome.started:
        outcome.retraining = start_retraining(request, outcome.started)
    return outcome


# -- the trigger -----------------------------------------------------------------------------------


def server_mode() -> bool:
    """A Prefect server is configured: retraining is started by an event and a deployment trigger."""
    return bool(os.environ.get("PREFECT_API_URL"))


def start_retraining(request: TrainingRequest, started: Started) -> RetrainingOutcome | None:
    """Embedded: run the retraining flow now (a subflow when called from a flow). Server: emit the event."""
    if started.mode == "server":
        from prefect.events import emit_event

        project = load_project(request.config_file, check_data=False)
        emit_event(RETRAINING_EVENT, resource={"prefect.resource.id": f"conveyor.model.{project.model_name}"},
                   payload={"trigger": started.trigger})  # fmt: skip
        return None
    return retraining_flow(request, started.trigger)


def _record_trigger(ledger: Ledger, breach: Breach, decision: TriggerDecision) -> Started:
    record = {**breach.record(), "decision": decision.reason}
    digest = json_digest(record)
    event = ledger.append(TRIGGERED, inputs=[d for d in (breach.evidence, _version_digest(breach.model, breach.version)) if d],
                          outputs=[digest], details=record)  # fmt: skip
    return Started(digest, event.seq, "server" if server_mode() else "embedded")


def _decide(breach: Breach, ledger: Ledger, policy: DriftPolicy, now: datetime, start: bool) -> TriggerDecision:
    """The trigger's decision; with ``start`` false a breach is reported but nothing is started or recorded."""
    decision = decide_trigger(breach, _past_triggers(ledger, breach.model), policy, now)
    if decision.start and not start:
        return TriggerDecision(False, "asked not to retrain (--no-retrain); " + decision.reason)
    return decision


def _past_triggers(ledger: Ledger, name: str) -> list[PastTrigger]:
    """Retrainings started for ``name``; one skipped for want of new labelled data does not count."""
    found = []
    for event in ledger.latest([TRIGGERED], limit=200):
        if event.details.get("model") != name:
            continue
        if any(c.kind == "retraining.skipped" for c in ledger.consumers(event.outputs[0])):
            continue
        found.append(PastTrigger.from_details(event.time, event.details, event.seq))
    return found


# -- retraining ------------------------------------------------------------------------------------


def retrain(request: TrainingRequest, trigger: str, runner: Any = None) -> RetrainingOutcome:
    """Train on the newest labelled data for ``trigger``; the result may become the canary, never the champion."""
    from mlflow import MlflowClient

    from pipelines.release import release_context
    from registry.release import promote

    project, _ = _setup(request)
    root, home = Path(request.root), Path(request.home)
    with Ledger(request.ledger_url, actor=request.actor) as ledger:
        if not [e for e in ledger.producers(trigger) if e.kind == TRIGGERED]:
            raise NotFound(f"No retraining trigger {trigger} in the ledger.",
                           hint="A retraining starts from a trigger that `conveyor drift check` or `conveyor labels add` recorded.")  # fmt: skip
        with file_lock(home, f"retraining-{project.model_name}"):  # a trigger delivered twice still retrains once
            earlier = [e for e in ledger.consumers(trigger) if e.kind == "retraining.started"]
            if earlier:
                return RetrainingOutcome("skipped", trigger, f"this trigger's retraining already started (ledger event #{earlier[0].seq})")
            ledger.append("retraining.started", inputs=[trigger], outputs=[], details={"model": project.model_name})
        try:
            data = labelled_data(project, ledger, root, home)
            champion = MlflowClient().get_model_version_by_alias(project.model_name, "champion")
            if data.digest == champion.tags.get("conveyor.data_digest"):
                reason = (f"no labelled data newer than what version {champion.version} was trained on "
                          f"({relative_to_root(data.path, root)}); add labels with `conveyor labels add FILE`")  # fmt: skip
                ledger.append("retraining.skipped", inputs=[trigger, data.digest], outputs=[], details={"reason": reason})
                return RetrainingOutcome("skipped", trigger, reason, data=str(data.path))
            outcome = run_training(replace(request, data=str(data.path), cause=trigger), runner or _direct)
        except ConveyorError as exc:
            ledger.append("retraining.failed", inputs=[trigger], outputs=[], details={"error": exc.message, "hint": exc.hint})
            return RetrainingOutcome("failed", trigger, str(exc))
        promotion = promote(release_context(root, home, project, ledger, root / "policies"), f"{outcome.name}/{outcome.version}", "canary")
        reasons = list(promotion.decision.reasons)
        ledger.append("retraining.completed", inputs=[trigger, outcome.version_digest], outputs=[],
                      details={"version": outcome.version, "canary": promotion.decision.ok, "reasons": reasons,
                               "data": relative_to_root(data.path, root)})  # fmt: skip
    verdict = "made the canary" if promotion.decision.ok else "registered, but the promotion policy refused it as canary"
    return RetrainingOutcome("completed", trigger, f"version {outcome.version} {verdict}", outcome.version,
                             promotion.decision.ok, reasons, str(data.path))  # fmt: skip


def labelled_data(project: ProjectConfig, ledger: Ledger, root: Path, home: Path) -> DatasetRef:
    """The newest labelled data version: the project's data plus every complete labels file added, deduplicated.

    With no such labels it is the project's data file itself. Otherwise the union is written once
    under ``home/datasets/`` by content and recorded with the digests it was derived from.
    """
    base = version_dataset(project.data, ledger, root=root)
    added = [e for e in reversed(ledger.latest(["labels.added"], limit=1_000))
             if e.details.get("model") == project.model_name and e.details.get("complete")]  # fmt: skip
    sources: dict[str, Path] = {}
    for event in added:
        path = Path(event.details["path"])
        path = path if path.is_absolute() else root / path
        digest = event.inputs[0]
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
    return version_dataset(path, ledger, root=root, details={"derived_from": [base.digest, *sources], "labels_for": project.model_name})


# -- flows -----------------------------------------------------------------------------------------


def retraining_flow(request: TrainingRequest, trigger: str) -> RetrainingOutcome:
    """``retrain`` as the Prefect flow ``retraining``, each training stage a task."""
    from pipelines.deployments import retraining

    return retraining(asdict(request), trigger)


def drift_flow(request: TrainingRequest, window: str | None = None) -> DriftOutcome:
    """``check_drift`` as the Prefect flow ``drift-check``; an embedded retraining runs as its subflow."""
    from pipelines.deployments import drift_check

    return drift_check(asdict(request), window)


# -- helpers ---------------------------------------------------------------------------------------


def _setup(request: TrainingRequest) -> tuple[ProjectConfig, DriftPolicy]:
    import mlflow

    mlflow.set_tracking_uri(request.mlflow_tracking_uri)
    project = load_project(request.config_file, check_data=False)
    return project, load_drift_policy(Path(request.root) / "policies")


def _window(text: str) -> Any:
    try:
        return parse_window(text)
    except ValueError as exc:
        raise PolicyInvalid(f"Bad window: {exc}.", hint="Give a row count (5000) or a duration (30m, 24h, 7d).") from None


def _at(text: str | None) -> datetime:
    return datetime.fromisoformat(text) if text else datetime.now(UTC)


def _version_digest(name: str, version: str) -> str | None:
    from mlflow import MlflowClient

    return MlflowClient().get_model_version(name, version).tags.get("conveyor.version_digest")


def _direct(name: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)
