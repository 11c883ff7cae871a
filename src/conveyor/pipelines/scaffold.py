"""A new project from a data file (``conveyor init --from-data FILE``).

What can be read from the data is inferred: the task from the target's values, the features and
their kinds from the dtypes, an entity key (a column named like an id whose values are unique) and
an event timestamp (a column named like a time that parses as one). What cannot (which column is
the target, when no name says so) is asked by the command line or refused naming the option.

Data with no entity key or no event timestamp gets them in a prepared copy: ``row_id`` numbers
the rows in file order, and ``event_timestamp`` gives each row its own minute in a seeded random
order, so the time split holds out a random ``test_fraction`` of rows (the config says so in a
comment). The policies are fitted to the task (classification: ROC AUC; regression: RMSE, its
bound the target's spread), the starter suite is checked against the data it came from, and the
folder becomes a DVC project with the data added and the stages written from the config.
Nothing is written when an answer is missing, and nothing already there is overwritten.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from conveyor import policies
from conveyor.pipelines.data import read_data, read_table
from conveyor.pipelines.validate import starter_suite
from conveyor.policies.errors import ConfigInvalid, DataInvalid
from conveyor.policies.project import ProjectConfig

__all__ = ["Scaffold", "guess_target", "init_project"]

SEED = 0  # the synthetic event times' order
_START = pd.Timestamp("2026-01-01T00:00:00Z")
_TARGET_NAMES = ("target", "label", "labels", "y", "class", "outcome", "default", "defaulted", "churn", "churned")
_TIME_NAME = re.compile(r"(^|_)(time|timestamp|date|datetime|ts|created|updated|at)($|_)", re.IGNORECASE)
_KEY_NAME = re.compile(r"(^id$|_id$|^id_|key$|^uuid$)", re.IGNORECASE)
_MAX_CATEGORIES = 1_000  # a text column with more distinct values is an identifier, not a feature
_MAX_CLASSES = 20  # an integer target with more distinct values than this is a quantity (regression)
_LEAK_ROWS = 20_000  # rows sampled for the leak check (one small tree per feature)
_LEAK_R2, _LEAK_AUC = 0.98, 0.99  # one feature alone scoring this well on held-out rows is a leak, or a key


@dataclass
class Scaffold:
    """What ``init_project`` wrote and what it inferred (the command line prints it)."""

    folder: Path
    config: dict[str, Any]
    written: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # each inference a user should check
    warnings: list[str] = field(default_factory=list)  # what looks wrong in the data (a leak, an identifier)
    example: dict[str, Any] = field(default_factory=dict)  # a /predict request body: the data's first row

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "config": self.config,
            "written": self.written,
            "notes": self.notes,
            "warnings": self.warnings,
            "example": self.example,
        }


def guess_target(columns: list[str]) -> str | None:
    """The column whose name says it is the target, if exactly one does."""
    named = [c for c in columns if c.lower() in _TARGET_NAMES]
    return named[0] if len(named) == 1 else None


def init_project(
    folder: Path,
    data: Path,
    *,
    target: str | None = None,
    task: str | None = None,
    entity_key: str | None = None,
    timestamp: str | None = None,
    name: str | None = None,
) -> Scaffold:
    """Make ``folder`` a Conveyor project for ``data`` (see the module's docstring)."""
    folder = folder.absolute()
    _refuse_overwrite(folder)
    frame = _read(data)
    columns = [str(c) for c in frame.columns]
    target = target or guess_target(columns)
    if target is None:
        raise ConfigInvalid(
            f"Cannot tell which column of {data} is the target.",
            hint=f"Name it with --target (one of: {', '.join(columns)}).",
        )
    for option, column in (("--target", target), ("--entity-key", entity_key), ("--timestamp", timestamp)):
        if column is not None and column not in columns:
            raise ConfigInvalid(
                f"{data} has no column {column!r} ({option}).", hint=f"Its columns: {', '.join(columns)}."
            )
    if frame[target].isna().all():
        raise DataInvalid(f"The target {target!r} of {data} has no values.", hint="Choose another --target.")
    notes: list[str] = []
    task = task or _task(frame[target], notes)
    if task not in ("classification", "regression"):
        raise ConfigInvalid(f"--task is {task!r}.", hint="Use classification or regression.")
    if task == "classification" and frame[target].nunique() < 2:
        raise DataInvalid(f"The target {target!r} has one value only: there is nothing to classify.")
    entity_key = entity_key or _entity_key(frame, target, notes)
    timestamp = timestamp or _timestamp(frame, target, notes)
    prepared = frame.copy()
    generated = []
    if entity_key is None:
        entity_key = _free("row_id", columns)
        prepared.insert(0, entity_key, [f"r{i:07d}" for i in range(len(prepared))])
        generated.append(entity_key)
        notes.append(
            f"No column is a unique entity key: `{entity_key}` numbers the rows in file order. Labels join "
            f"predictions by it only where clients send `{entity_key}` with their requests."
        )
    if timestamp is None:
        timestamp = _free("event_timestamp", columns)
        order = pd.Series(range(len(prepared))).sample(frac=1.0, random_state=SEED).to_numpy()
        prepared.insert(1, timestamp, _START + pd.to_timedelta(order, unit="min"))
        generated.append(timestamp)
        notes.append(
            f"No column is an event time: `{timestamp}` gives each row its own minute in a seeded random order "
            f"(seed {SEED}), so the time split holds out a random share of the rows; labels need no time "
            "(each joins the latest prediction for its entity)."
        )
    features, dropped = _features(prepared, {entity_key, timestamp, target})
    if not any(features.values()):
        raise DataInvalid(f"{data} has no column to learn from besides the target and keys.")
    notes += dropped
    warnings = _identifiers(prepared, features) + _leaks(prepared, features, target, task)
    model_name = name or _model_name(data)
    data_name = data.name if prepared.columns.equals(frame.columns) else f"{data.stem}-prepared{_suffix(data)}"
    config = {
        "model_name": model_name,
        "task": task,
        "data": f"data/{data_name}",
        "entity_key": entity_key,
        "event_timestamp": timestamp,
        "target": target,
        "features": {kind: columns for kind, columns in features.items() if columns or kind != "boolean"},
        **({"generated": generated} if generated else {}),
        "estimator": {
            "class": "sklearn.ensemble.HistGradientBoosting"
            + ("Classifier" if task == "classification" else "Regressor"),
            "params": {"max_iter": 200, "random_state": 7},
        },
        "split": {"method": "time", "test_fraction": 0.2},
        "feature_ttl_days": 365,
    }
    _check(config, folder)
    scaffold = Scaffold(folder, config, notes=notes, warnings=warnings, example=_example(prepared, config))
    _write(scaffold, data, prepared if data_name != data.name else None, frame[target])
    return scaffold


# -- inference -----------------------------------------------------------------------------------


def _read(data: Path) -> pd.DataFrame:

    if not data.is_file():
        raise ConfigInvalid(f"There is no file {data}.", hint="Pass --from-data with a CSV or Parquet file.")
    frame = read_table(data)
    if frame.empty:
        raise DataInvalid(f"{data} has no rows.", hint="Pass a file with a header row and rows.")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _task(target: pd.Series, notes: list[str]) -> str:
    values = target.dropna()
    integral = pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values)
    if not integral:
        integral = bool((values == values.round()).all())
    task = "classification" if integral and values.nunique() <= _MAX_CLASSES else "regression"
    notes.append(
        f"Task {task}: the target has {values.nunique():,} distinct "
        + ("values, not all whole numbers." if not integral else "values.")
        + " Pass --task to choose otherwise."
    )
    return task


def _entity_key(frame: pd.DataFrame, target: str, notes: list[str]) -> str | None:
    for column in frame.columns:
        if column != target and _KEY_NAME.search(column) and frame[column].notna().all() and frame[column].is_unique:
            notes.append(f"Entity key `{column}`: named like an id, every value unique. Pass --entity-key otherwise.")
            return str(column)
    return None


def _timestamp(frame: pd.DataFrame, target: str, notes: list[str]) -> str | None:
    for column in frame.columns:
        if column == target or not _TIME_NAME.search(column):
            continue
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values):
            continue  # "created_at" as epoch numbers is ambiguous: say so with --timestamp
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
        if parsed.notna().all():
            notes.append(f"Event timestamp `{column}`: named like a time, every value one. Pass --timestamp otherwise.")
            return str(column)
    return None


def _features(frame: pd.DataFrame, taken: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    numeric, boolean, categorical, dropped = [], [], [], []
    for column in frame.columns:
        if column in taken:
            continue
        values = frame[column]
        if _is_boolean(values):
            boolean.append(str(column))
        elif pd.api.types.is_numeric_dtype(values):
            numeric.append(str(column))
        elif pd.api.types.is_datetime64_any_dtype(values):
            dropped.append(f"`{column}` is a time, not a feature: left out (derive features from it by hand).")
        elif values.nunique() > _MAX_CATEGORIES:
            dropped.append(
                f"`{column}` has {values.nunique():,} distinct values (an identifier or free text): left out."
            )
        else:
            categorical.append(str(column))
    return {"numeric": numeric, "boolean": boolean, "categorical": categorical}, dropped


def _example(frame: pd.DataFrame, config: dict[str, Any]) -> dict[str, Any]:
    """A ``/predict`` body with the data's first complete row as a client sends it: the entity key
    (and the event time, where the data has one), numbers, booleans as JSON booleans, categories as text."""
    features = config["features"]
    columns = [c for kind in ("numeric", "boolean", "categorical") for c in features.get(kind, [])]
    complete = frame[columns].notna().all(axis=1)
    row = frame[complete].iloc[0] if complete.any() else frame.iloc[0]
    body: dict[str, Any] = {config["entity_key"]: str(row[config["entity_key"]])}
    if config["event_timestamp"] not in config.get("generated", []):
        body[config["event_timestamp"]] = pd.Timestamp(row[config["event_timestamp"]]).isoformat()
    for column in columns:
        value = row[column]
        if pd.isna(value):
            body[column] = None
        elif column in features.get("boolean", []):
            body[column] = bool(value)
        elif column in features.get("numeric", []):
            body[column] = float(value)
        else:
            body[column] = str(value)
    return {"rows": [body]}


def _is_boolean(values: pd.Series) -> bool:
    """True/false values (a CSV's True/False, true/false; with or without gaps)."""
    if pd.api.types.is_bool_dtype(values):
        return True
    present = values.dropna()
    return values.dtype == object and not present.empty and all(isinstance(v, bool) for v in present)


def _identifiers(frame: pd.DataFrame, features: dict[str, list[str]]) -> list[str]:
    """Features that look like identifiers: named like one, or whole numbers unique to each row."""
    found = []
    for column in [*features["numeric"], *features["categorical"]]:
        values = frame[column].dropna()
        named = bool(_KEY_NAME.search(column))
        unique_numbers = (
            pd.api.types.is_numeric_dtype(values)
            and len(values) >= 100
            and values.is_unique
            and bool((values == values.round()).all())
        )
        if named or unique_numbers:
            why = "named like an identifier" if named else f"a whole number unique to each of its {len(values):,} rows"
            found.append(
                f"`{column}` is {why}: as a feature it lets the model memorise rows rather than learn. "
                "Remove it from `features` unless its values mean something."
            )
    return found


def _leaks(frame: pd.DataFrame, features: dict[str, list[str]], target: str, task: str) -> list[str]:
    """Features that alone predict the target almost perfectly on rows held out: most often a value
    known only after the outcome (a leak), which no request will have in time."""
    import numpy as np
    from sklearn.metrics import r2_score, roc_auc_score
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    rows = frame.dropna(subset=[target]).sample(min(len(frame), _LEAK_ROWS), random_state=SEED)
    cut = int(len(rows) * 0.7)
    if cut < 50 or len(rows) - cut < 20:
        return []
    y = rows[target]
    classes = sorted(y.unique(), key=str)
    found = []
    for column in [*features["numeric"], *features["boolean"], *features["categorical"]]:
        values = rows[column]
        if column in features["categorical"]:
            x = values.astype("category").cat.codes.to_numpy(dtype=float).reshape(-1, 1)
        else:
            x = pd.to_numeric(values, errors="coerce").fillna(-1e12).to_numpy(dtype=float).reshape(-1, 1)
        if task == "regression":
            model = DecisionTreeRegressor(max_depth=8, min_samples_leaf=5, random_state=SEED)
            model.fit(x[:cut], y.iloc[:cut].astype(float))
            score, name, bar = r2_score(y.iloc[cut:].astype(float), model.predict(x[cut:])), "R²", _LEAK_R2
        else:
            model = DecisionTreeClassifier(max_depth=8, min_samples_leaf=5, random_state=SEED)
            model.fit(x[:cut], y.iloc[:cut].astype(str))
            held = y.iloc[cut:].astype(str)
            if held.nunique() < 2:
                continue
            proba = model.predict_proba(x[cut:])
            if len(classes) == 2:
                positive = list(model.classes_).index(str(classes[-1])) if str(classes[-1]) in model.classes_ else 0
                score = roc_auc_score(held == str(classes[-1]), proba[:, positive])
            else:
                score = float(np.mean(model.classes_[proba.argmax(axis=1)] == held.to_numpy()))
            name, bar = ("ROC AUC" if len(classes) == 2 else "accuracy"), _LEAK_AUC
        if score >= bar:
            found.append(
                f"`{column}` alone predicts `{target}` almost perfectly ({name} {score:.4f} on held-out rows): "
                "a leak? A value recorded after the outcome (or computed from it) is not there when a "
                "prediction is asked for; remove it from `features` unless it truly is."
            )
    return found


def _free(name: str, columns: list[str]) -> str:
    while name in columns:
        name = f"_{name}"
    return name


def _model_name(data: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", data.stem).strip("-.") or "model"
    return name if name[0].isalnum() else f"m{name}"


def _suffix(data: Path) -> str:
    return ".parquet" if data.suffix.lower() in {".parquet", ".pq"} else ".csv"


def _check(config: dict[str, Any], folder: Path) -> None:
    """The config as the pipelines will read it (no file written yet)."""
    from pydantic import ValidationError

    try:
        ProjectConfig.model_validate({**config, "data": folder / config["data"]})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigInvalid(
            f"The inferred config is not valid: {'.'.join(map(str, first['loc']))}: {first['msg']}.",
            hint="Pass --name, --target, --entity-key or --timestamp to choose differently.",
        ) from None


# -- writing ------------------------------------------------------------------------------------

_OUR_FILES = ("conveyor.yaml", "policies", "dvc.yaml", "params.yaml", ".dvc")


def _refuse_overwrite(folder: Path) -> None:
    there = [name for name in _OUR_FILES if (folder / name).exists()]
    if there:
        raise ConfigInvalid(
            f"{folder} already holds {', '.join(there)}: `conveyor init` does not overwrite a project.",
            hint="Choose a new or empty folder: `conveyor init NEW_FOLDER --from-data FILE`.",
        )


def _write(scaffold: Scaffold, data: Path, prepared: pd.DataFrame | None, target: pd.Series) -> None:
    """Write everything into a staging folder beside ``folder``, then move it in: all or nothing."""
    import yaml

    folder, config = scaffold.folder, scaffold.config
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / ".conveyor-init"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        (staging / "data").mkdir()
        data_file = staging / config["data"]
        if prepared is None:
            shutil.copyfile(data, data_file)
        elif data_file.suffix == ".parquet":
            prepared.to_parquet(data_file, index=False)
        else:
            prepared.to_csv(data_file, index=False)
        (staging / "conveyor.yaml").write_text(_config_text(config, scaffold.notes, scaffold.warnings))
        project = ProjectConfig.model_validate({**config, "data": data_file})

        suite = starter_suite(project, read_data(data_file, project))
        policies = staging / "policies"
        (policies / "expectations").mkdir(parents=True)
        (policies / "expectations" / f"{config['model_name']}.json").write_text(json.dumps(suite, indent=2) + "\n")
        for name, text in _policies(config["task"], target).items():
            (policies / f"{name}.yaml").write_text(text)
        (staging / "dvc.yaml").write_text(_stages(config))
        (staging / "params.yaml").write_text(
            yaml.safe_dump({"config": "conveyor.yaml", "data": config["data"]}, sort_keys=False)
        )
        (staging / ".gitignore").write_text("/.conveyor/\n/build/\n")  # local state (see the README)
        written = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        for entry in staging.iterdir():
            entry.rename(folder / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    scaffold.written = written
    scaffold.written += _dvc_init(folder, folder / config["data"])


def _config_text(config: dict[str, Any], notes: list[str], warnings: list[str]) -> str:
    import yaml

    head = "".join(
        textwrap.fill(f"WARNING: {w}", 98, initial_indent="# ", subsequent_indent="#   ") + "\n" for w in warnings
    )
    head += "# Made by `conveyor init` from the data; review it. What was inferred:\n"
    head += "".join(textwrap.fill(note, 98, initial_indent="#  - ", subsequent_indent="#    ") + "\n" for note in notes)
    head += (
        "# Train with `conveyor train`; the policies are in policies/, the data's suite in policies/expectations/.\n"
    )
    return head + yaml.safe_dump(config, sort_keys=False, width=100)


def _policies(task: str, target: pd.Series) -> dict[str, str]:
    """promotion.yaml and drift.yaml for the task; the other policies as Conveyor ships them."""
    shipped = Path(policies.__file__).parent / "defaults"
    if task == "classification":
        metric, bound, quality = (
            "roc_auc",
            "roc_auc: {min: 0.6}         # above chance; tighten once you know the model",
            "min: 0.6",
        )
    else:
        spread = float(pd.to_numeric(target, errors="coerce").std())
        limit = float(f"{spread:.3g}") if math.isfinite(spread) and spread > 0 else 1.0
        metric = "rmse"
        bound = "r2: {min: 0.0}             # better than predicting the mean; tighten once you know the model"
        quality = f"max: {limit:g}                  # the target's standard deviation: no better than its mean"
    promotion = f"""# What a model version must show before `conveyor promote` moves an alias to it ({task}).
require:
  validation_passed: true      # its training data passed its expectation suite
  clean_tree: false            # set true in CI: provenance must name a clean, committed tree
thresholds:                    # absolute limits on holdout metrics
  {bound}
beat_champion:                 # on the candidate's own holdout, judged by a 95% bootstrap interval
  metric: {metric}
  min_delta: 0.0
max_model_size_mb: 50
"""
    drift = (shipped / "drift.yaml").read_text()
    drift = re.sub(r"(?m)^  metric: roc_auc.*$", f"  metric: {metric}", drift, count=1)
    drift = re.sub(r"(?m)^  min: 0\.75.*$", f"  {quality}", drift, count=1)
    drift = re.sub(r"(?m)^llm:.*\Z", "", drift, flags=re.DOTALL).rstrip() + "\n"  # a tabular project
    out = {"promotion": promotion, "drift": drift}
    for name in ("signing", "serving", "canary"):
        text = (shipped / f"{name}.yaml").read_text()
        out[name] = re.sub(r"(?m)^llm:.*\Z", "", text, flags=re.DOTALL).rstrip() + "\n"
    return out


_TRACKED = ("task", "features", "estimator", "split", "feature_ttl_days")  # the config's keys that make a model


def _stages(config: dict[str, Any]) -> str:
    suite = f"policies/expectations/{config['model_name']}.json"
    params = "".join(f"          - {key}\n" for key in _TRACKED)
    return (
        "# The training pipeline as DVC stages, written by `conveyor init` from conveyor.yaml. Each stage\n"
        "# is a `conveyor` command, so `dvc repro` and the CLI do the same work.\n"
        "stages:\n"
        "  validate:\n"
        "    cmd: conveyor --config ${config} validate --summary build/validation.json\n"
        f"    deps:\n      - ${{config}}\n      - ${{data}}\n      - {suite}\n"
        "    outs:\n      - build/validation.json:\n          cache: false\n"
        "  train:\n"
        "    cmd: conveyor --config ${config} train --metrics build/metrics.json\n"
        f"    deps:\n      - build/validation.json\n      - ${{config}}\n      - ${{data}}\n      - {suite}\n"
        "      - policies/promotion.yaml\n"
        f"    params:\n      - ${{config}}:\n{params}"
        "    metrics:\n      - build/metrics.json:\n          cache: false\n"
    )


def _dvc_init(folder: Path, data: Path) -> list[str]:
    """``dvc init`` (inside a git work tree as its subdirectory when it is not the top, without
    git when there is none) and ``dvc add`` of the data; returns the files DVC wrote."""
    import logging
    import subprocess

    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True, check=False
    )
    in_git = top.returncode == 0
    logging.getLogger("dvc").setLevel(logging.WARNING)  # its "Initialized DVC repository." is for its own CLI
    try:
        Repo.init(
            str(folder), no_scm=not in_git, subdir=in_git and Path(top.stdout.strip()).resolve() != folder.resolve()
        )
        with Repo(str(folder)) as repo:
            repo.scm_context.quiet = True
            with repo.config.edit() as conf:
                conf["core"]["analytics"] = False  # quiet, as Conveyor runs DVC
                conf["core"]["check_update"] = False
            repo.add([str(data)])
    except DvcException as exc:
        raise DataInvalid(f"DVC could not set up {folder}: {exc}.", hint="Run `dvc doctor` to see why.") from None
    return [".dvc/config", f"{data.relative_to(folder).as_posix()}.dvc"]
