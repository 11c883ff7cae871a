"""Drift: has live traffic moved away from what the champion learned from?

The reference is the champion's own training set, found through its registry tag and the
ledger by digest (and re-hashed before use). The current data is a window of the inference log,
by time or by row count. Evidently's ``DataDriftPreset`` compares them column by column with the
methods and thresholds of ``policies/drift.yaml``; the window has drifted when the share of
drifted columns reaches the policy's share. Each check writes a JSON result and Evidently's HTML
report under ``reports/drift/`` and returns a ``DriftResult``; recording it is the caller's.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from conveyor.policies.drift import DriftPolicy, Window
from conveyor.policies.errors import NotFound, NothingToActOn
from conveyor.policies.project import ProjectConfig
from conveyor.registry.digests import canonical_json, file_digest
from conveyor.registry.inference_log import read_log
from conveyor.registry.ledger import Ledger
from conveyor.registry.lineage import training_set
from conveyor.registry.pages import Heading, inject_heading, publish, self_contained, table, write_index
from conveyor.registry.pages import Status as PageStatus
from conveyor.registry.workspace import Workspace

__all__ = [
    "ColumnDrift",
    "Comparison",
    "DriftResult",
    "Reference",
    "WindowCheck",
    "as_features",
    "caused",
    "champion_reference",
    "check_drift",
    "column_drifts",
    "drift_heading",
    "finish_drift_page",
    "measure_drift",
    "read_window",
    "statistic",
    "window_digest",
]

Status = Literal["drift", "no_drift", "not_enough_data"]
EXIT_CODES: dict[str, int] = {"no_drift": 0, "drift": 1, "not_enough_data": 3}


@dataclass(frozen=True)
class Reference:
    """The champion a check compares against, and the training set it learned from."""

    name: str
    version: str
    version_digest: str
    digest: str  # the training set's sha256
    path: Path


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    threshold: float
    score: float
    drifted: bool


@dataclass
class WindowCheck:
    """What a check of a window of live traffic judged, for every kind of model: the version, the
    window (as asked, its rows and bounds) and the reference it was compared with."""

    status: str
    model: str
    version: str
    window: str
    window_rows: int
    reference_rows: int
    since: str | None = None
    until: str | None = None


@dataclass
class DriftResult(WindowCheck):
    status: Status
    share: float = 0.0
    drifted: list[str] = field(default_factory=list)
    columns: list[ColumnDrift] = field(default_factory=list)
    sampled: bool = False
    reference_digest: str = ""
    version_digest: str = ""  # the champion's, as the registry tags it
    window_digest: str = ""
    report: Path | None = None
    report_digest: str | None = None
    html: Path | None = None
    html_digest: str | None = None
    snapshot: Path | None = None
    snapshot_digest: str | None = None
    trigger: str | None = None  # what the trigger decided, once it has

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out |= {key: str(getattr(self, key)) if getattr(self, key) else None for key in ("report", "html", "snapshot")}
        return out

    def describe(self) -> str:
        if self.status == "not_enough_data":
            return f"not enough data: {self.window_rows:,} rows in the {self.window} window (the policy needs more)"
        names = ", ".join(self.drifted) or "none"
        verdict = "drift" if self.status == "drift" else "no drift"
        return f"{verdict}: {len(self.drifted)} of {len(self.columns)} columns drifted ({self.share:.0%}): {names}"


def champion_reference(ws: Workspace, ledger: Ledger, name: str) -> Reference:
    """The champion of ``name`` and its training set, checked against the digest it was trained on."""
    number = ws.champion(name)
    if number is None:
        raise NothingToActOn(
            f"{name} has no champion to compare traffic with.",
            hint=f"Promote one first: `conveyor promote {name}/<version> --to champion`.",
        )
    version = ws.mlflow().get_model_version(name, number)
    digest = version.tags.get("conveyor.training_set")
    path = training_set(ledger, digest)
    if digest is None or path is None:
        raise NotFound(
            f"The training set of {name} version {version.version} ({digest or 'not tagged'}) is not in the "
            "ledger, or its file is gone or changed.",
            hint="Retrain, or restore the file; drift is not measured against anything else.",
        )
    return Reference(name, str(version.version), version.tags.get("conveyor.version_digest", ""), digest, path)


def read_window(folder: Path, window: Window, now: datetime | None = None) -> pd.DataFrame:
    """The inference log's rows in ``window``: the last ``seconds`` before ``now``, or the last ``rows``."""
    now = now or datetime.now(UTC)
    if window.seconds:
        return read_log(folder, since=now - timedelta(seconds=window.seconds), until=now)
    frame = read_log(folder, until=now)
    return frame.tail(window.rows).reset_index(drop=True)


def window_digest(frame: pd.DataFrame) -> str:
    """A content address for a window: sha256 over pandas' row hashes, in the window's order."""
    hashes = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False)
    header = canonical_json(list(map(str, frame.columns)))
    return "sha256:" + hashlib.sha256(header + hashes.to_numpy().tobytes()).hexdigest()


def as_features(frame: pd.DataFrame, project: ProjectConfig, *, logged: bool) -> pd.DataFrame:
    """The feature columns of a training set (``logged=False``) or of an inference-log window, typed alike."""
    names = list(project.features.all)
    source = [f"feature.{n}" for n in names] if logged else names
    missing = [s for s in source if s not in frame.columns]
    if missing:
        raise NotFound(
            f"The {'inference log' if logged else 'training set'} has no column(s) {', '.join(missing)}.",
            hint="The champion's features and the project config disagree; check `conveyor config check`.",
        )
    out = frame[source].copy()
    out.columns = names
    for column in project.features.numbers:  # booleans as 1.0/0.0, logged true/false or trained on either
        out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    for column in project.features.categorical:
        out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out.reset_index(drop=True)


@dataclass(frozen=True)
class Comparison:
    """Evidently's verdict on two feature frames, and where its reports are."""

    share: float
    columns: list[ColumnDrift]
    html: Path
    snapshot: Path  # Evidently's own result, as JSON
    sampled: bool


def column_drifts(result: dict[str, Any], only: list[str] | None = None) -> list[ColumnDrift]:
    """Each column's drift test from an Evidently snapshot's ``dict()``: method, threshold, score, verdict."""
    scores = {
        m["config"]["column"]: m["value"] for m in result["metrics"] if m["config"]["type"].endswith(":ValueDrift")
    }
    columns = []
    for test in result["tests"]:
        params = test["metric_config"]["params"]
        if params["type"].endswith(":ValueDrift") and (only is None or params["column"] in only):
            column = params["column"]
            columns.append(
                ColumnDrift(
                    column,
                    params["method"],
                    float(params["threshold"]),
                    float(scores[column]),
                    test["status"] == "FAIL",
                )
            )
    return columns


def check_drift(
    reference: pd.DataFrame, current: pd.DataFrame, project: ProjectConfig, policy: DriftPolicy, out: Path, label: str
) -> Comparison:
    """Compare two feature frames with Evidently; writes ``<out>/<label>.html`` and ``.evidently.json``."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    limit = policy.window.sample_above
    sampled = len(reference) > limit or len(current) > limit
    reference = reference.sample(limit, random_state=0) if len(reference) > limit else reference
    current = current.sample(limit, random_state=0) if len(current) > limit else current
    rules = policy.drift
    definition = DataDefinition(
        numerical_columns=list(project.features.numeric),
        categorical_columns=[*project.features.categorical, *project.features.boolean],
    )
    preset = DataDriftPreset(
        drift_share=rules.share,
        num_method=rules.numeric.method,
        num_threshold=rules.numeric.threshold,
        cat_method=rules.categorical.method,
        cat_threshold=rules.categorical.threshold,
        per_column_method={c: t.method for c, t in rules.columns.items()} or None,
        per_column_threshold={c: t.threshold for c, t in rules.columns.items()} or None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy divides by zero for a category the reference lacks
        snapshot = Report([preset], include_tests=True).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )
    result = snapshot.dict()
    columns = column_drifts(result)
    share = sum(c.drifted for c in columns) / len(columns) if columns else 0.0
    out.mkdir(parents=True, exist_ok=True)
    html = out / f"{label}.html"
    snapshot.save_html(str(html))
    evidently = out / f"{label}.evidently.json"
    evidently.write_text(json.dumps(result, default=str))
    return Comparison(share, columns, html, evidently, sampled)


def measure_drift(
    ledger: Ledger,
    ws: Workspace,
    project: ProjectConfig,
    policy: DriftPolicy,
    window: Window,
    now: datetime | None = None,
) -> DriftResult:
    """The champion's training set against ``window`` of its inference log; reports under ``reports/drift``."""
    now = now or datetime.now(UTC)
    reference = champion_reference(ws, ledger, project.model_name)
    frame = read_window(ws.inference_dir(project.model_name), window, now)
    since = frame["time"].min().isoformat() if len(frame) else None
    until = frame["time"].max().isoformat() if len(frame) else None
    result = DriftResult(
        "not_enough_data",
        reference.name,
        reference.version,
        window.describe(),
        len(frame),
        0,
        since,
        until,
        reference_digest=reference.digest,
        version_digest=reference.version_digest,
        window_digest=window_digest(frame),
    )
    out = ws.reports / "drift"
    label = f"{reference.name}-v{reference.version}-{now:%Y%m%dT%H%M%S%fZ}"
    if len(frame) >= policy.window.min_rows:
        training = pd.read_parquet(reference.path)
        current = as_features(frame, project, logged=True)
        compared = check_drift(as_features(training, project, logged=False), current, project, policy, out, label)
        result.reference_rows, result.share, result.columns, result.sampled = (
            len(training),
            compared.share,
            compared.columns,
            compared.sampled,
        )
        result.drifted = [c.column for c in compared.columns if c.drifted]
        result.status = "drift" if compared.share >= policy.drift.share else "no_drift"
        result.html = compared.html  # headed, and its digest taken, by finish_drift_page
        result.snapshot, result.snapshot_digest = compared.snapshot, file_digest(compared.snapshot)
    else:
        result.html = out / f"{label}.html"  # the verdict alone, written by finish_drift_page
    result.report = out / f"{label}.json"
    result.report_digest = _write(result, result.report)
    return result


_DISTANCES = {"wasserstein", "psi", "kl_div", "jensenshannon", "hellinger", "emd", "ks_distance"}


def statistic(method: str) -> str:
    """What a column's score is under ``method``: a p-value (drift below the threshold) or a distance
    (drift at or above it)."""
    return "distance" if method in _DISTANCES else "p-value"


_STATUS: dict[str, PageStatus] = {"drift": "breach", "no_drift": "ok", "not_enough_data": "inconclusive"}


def drift_heading(result: DriftResult) -> Heading:
    """What the drift page says first: model, version, window, verdict, reasons, sample sizes and
    what the check caused."""
    verdict = {"drift": "drift", "no_drift": "no drift", "not_enough_data": "not enough data"}[result.status]
    reasons = [
        f"{c.column}: {statistic(c.method)} {c.score:.4g} by {c.method} "
        f"({'<' if statistic(c.method) == 'p-value' else '>='} {c.threshold:g} is drift)"
        for c in result.columns
        if c.drifted
    ]
    return Heading(
        "drift",
        f"Drift of {result.model} version {result.version}: {verdict} ({result.window})",
        result.describe(),
        _STATUS[result.status],
        model=result.model,
        version=result.version,
        window=f"{result.window}: {result.since or '-'} to {result.until or '-'}",
        reasons=reasons,
        samples=[
            ("reference", f"the training set of version {result.version}, {result.reference_rows:,} rows"),
            ("live", f"{result.window_rows:,} logged requests" + (" (sampled)" if result.sampled else "")),
        ],
        caused=(
            "nothing: too little data for a verdict"
            if result.status == "not_enough_data"
            else caused(result.trigger, "a retraining", breach=result.status == "drift")
        ),
    )


def caused(trigger: str | None, action: str, *, breach: bool) -> str:
    """What a check caused, in words, from its trigger's decision (``started: …`` or ``not started: …``)."""
    if trigger is None:
        return "nothing: no breach" if breach is False else "nothing yet: the trigger has not decided"
    if trigger.startswith("started: "):
        return f"started {action} ({trigger.removeprefix('started: ')})"
    return f"no {action.removeprefix('a ').removeprefix('an ')}: {trigger.removeprefix('not started: ')}"


def finish_drift_page(result: DriftResult, reports: Path) -> None:
    """Write the check's page (Evidently's, headed by the verdict; or, with too little data for a
    comparison, a page of the heading alone) once the trigger has decided, and note its digest."""
    heading = drift_heading(result)
    if result.html is None:
        return
    if not result.html.exists():  # too little data: nothing was compared
        publish(result.html, self_contained(heading, ""), None)
    else:
        rows = [
            [
                c.column,
                "drifted" if c.drifted else "no drift",
                c.method,
                f"{statistic(c.method)} {c.score:.4g}",
                f"{c.threshold:g}",
            ]
            for c in sorted(result.columns, key=lambda c: (not c.drifted, c.column))
        ]
        inject_heading(result.html, heading, table(["column", "verdict", "method", "statistic", "threshold"], rows))
    result.html_digest = file_digest(result.html)
    write_index(reports)


def _write(result: DriftResult, path: Path) -> str:
    """Write the JSON result (all but its own path and digest) atomically; returns its digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The page is headed (and hashed) after the trigger decided, which needs this file's digest.
    body = {k: v for k, v in result.to_dict().items() if k not in ("report", "report_digest", "trigger", "html_digest")}
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(canonical_json(body))
    partial.replace(path)
    return file_digest(path)
