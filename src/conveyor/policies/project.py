"""The project config (``conveyor.yaml``): what the data is and what to train on it.

One YAML file names the data file, its entity key, event timestamp, target and feature columns,
the task and the estimator. Every stage reads columns from here; none hard-codes them. Every
mistake is reported as one paragraph naming the field and the fix.
"""

from __future__ import annotations

import csv
import difflib
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from conveyor.policies.errors import ConfigInvalid, DataInvalid
from conveyor.policies.loading import load_config

__all__ = [
    "LOWER_IS_BETTER",
    "DirectionalCheck",
    "EstimatorSpec",
    "Features",
    "ProjectConfig",
    "SplitSpec",
    "load_project",
    "read_columns",
]


# Holdout metrics where a smaller value is the better model.
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece", "rmse", "mae"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Features(_Strict):
    """Feature columns by kind: numeric ones are cast to float, categorical ones to string, boolean
    ones are true/false in the data and in requests (JSON booleans) and 1.0/0.0 to the model."""

    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    boolean: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return self.numeric + self.boolean + self.categorical

    @property
    def numbers(self) -> tuple[str, ...]:
        """The columns the model sees as numbers: numeric ones and booleans (as 1.0/0.0)."""
        return self.numeric + self.boolean


class EstimatorSpec(_Strict):
    """An estimator class by import path (``package.module.Class``) and its parameters."""

    class_path: str = Field(alias="class")
    params: dict[str, Any] = {}

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("class_path")
    @classmethod
    def _dotted(cls, value: str) -> str:
        module, _, name = value.rpartition(".")
        if not module or not name:
            raise ValueError("must be an import path such as sklearn.ensemble.RandomForestClassifier")
        return value

    def resolve(self) -> type:
        """Import the estimator class; a clear error if it cannot be found."""
        module_name, _, name = self.class_path.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigInvalid(
                f"`estimator.class` is {self.class_path!r}, but module {module_name!r} cannot be imported ({exc}).",
                hint="Use an installed estimator, e.g. sklearn.ensemble.HistGradientBoostingClassifier.",
            ) from None
        estimator = getattr(module, name, None)
        if not isinstance(estimator, type):
            found = difflib.get_close_matches(name, [n for n in dir(module) if not n.startswith("_")], n=1)
            hint = f"Did you mean {module_name}.{found[0]}?" if found else "Check the class name's spelling."
            raise ConfigInvalid(
                f"`estimator.class` is {self.class_path!r}, but {module_name} has no class {name!r}.",
                hint=hint,
            )
        return estimator

    def build(self) -> Any:
        """A fresh, unfitted estimator with the configured parameters."""
        estimator = self.resolve()
        try:
            return estimator(**self.params)
        except TypeError as exc:
            raise ConfigInvalid(
                f"`estimator.params` were refused by {self.class_path}: {exc}.",
                hint="Use only parameter names that class accepts.",
            ) from None


class SplitSpec(_Strict):
    """How to hold out data: the latest ``test_fraction`` of rows by event time."""

    method: Literal["time"] = "time"
    test_fraction: float = Field(0.2, gt=0, lt=1)


class DirectionalCheck(_Strict):
    """Raising ``feature`` by ``delta`` should move the prediction ``direction`` (up or down)."""

    feature: str
    direction: Literal["increase", "decrease"]
    delta: float
    min_share: float = Field(0.9, gt=0, le=1)  # of holdout rows that must move that way (or stay)


class ProjectConfig(_Strict):
    """A project: its data, columns, task and estimator."""

    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    task: Literal["classification", "regression"]
    data: Path
    entity_key: str
    event_timestamp: str
    target: str
    features: Features
    estimator: EstimatorSpec
    split: SplitSpec = SplitSpec()
    feature_ttl_days: int = Field(365, gt=0)  # how far back a feature value may come from
    behaviour: list[DirectionalCheck] = []  # behavioural checks on the trained model
    # Key columns the data does not have, made by `conveyor init` for its prepared copy: labels
    # join without them (a generated event time is never asked of labels; a generated row number
    # only joins where clients sent it with their requests).
    generated: tuple[str, ...] = ()
    settings: dict[str, Any] = {}  # read by conveyor's settings, not here
    source: Path | None = Field(None, exclude=True)  # the file this was read from

    @model_validator(mode="after")
    def _columns_consistent(self) -> ProjectConfig:
        if not self.features.all:
            raise ValueError("`features` lists no columns: name at least one numeric or categorical feature")
        keys = {"entity_key": self.entity_key, "event_timestamp": self.event_timestamp, "target": self.target}
        named = list(keys.values()) + list(self.features.all)
        twice = sorted({c for c in named if named.count(c) > 1})
        numeric = set(self.features.numeric)
        for check in self.behaviour:
            if check.feature not in numeric:
                raise ValueError(f"behaviour check on {check.feature!r}: directional checks need a numeric feature")
        stray = [c for c in self.generated if c not in (self.entity_key, self.event_timestamp)]
        if stray:
            raise ValueError(
                f"`generated` names {', '.join(map(repr, stray))}: only the entity key and the event "
                "timestamp can be generated"
            )
        if twice:
            raise ValueError(
                f"column(s) {', '.join(map(repr, twice))} named more than once: the entity key, event "
                "timestamp, target and each feature must be different columns"
            )
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the project reads from the data file."""
        return (self.entity_key, self.event_timestamp, self.target, *self.features.all)

    def check_columns(self, available: Sequence[str]) -> None:
        """Refuse a data file that lacks a column this config names."""
        missing = [c for c in self.columns if c not in available]
        if not missing:
            return
        lines = []
        for column in missing:
            close = difflib.get_close_matches(column, list(available), n=1)
            lines.append(f"{column!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigInvalid(
            f"The config names column(s) that {self.data} does not have: {', '.join(lines)}.",
            hint=f"Fix the names in {self.source or 'conveyor.yaml'}; the file has: {', '.join(available)}.",
        )


def read_columns(path: Path) -> list[str]:
    """The column names of a CSV or Parquet file, without reading its rows."""
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
    except UnicodeDecodeError:
        raise DataInvalid(f"{path} is not UTF-8 text.", hint="Re-export the file as UTF-8 CSV.") from None
    except (OSError, csv.Error) as exc:
        raise DataInvalid(f"Cannot read {path}: {exc}.", hint="Check the file is a CSV or Parquet file.") from None
    except Exception as exc:  # pyarrow's own errors for a damaged Parquet file
        raise DataInvalid(f"Cannot read the schema of {path}: {exc}.", hint="Check the file is intact.") from None
    if not header:
        raise DataInvalid(
            f"{path} is empty: it has no header row.", hint="Point `data` at a file with a header and rows."
        )
    return [c.strip() for c in header]


def load_project(path: str | Path, *, check_data: bool = True) -> ProjectConfig:
    """Read and check a project config. With ``check_data`` (what training and ``config check``
    need), also build the estimator once (an unknown class or refused parameters fail now, not at
    training time) and check the columns against the data if it exists; without it, nothing
    heavier than the config's own schema is imported."""
    path = Path(path).absolute()
    config = load_config(
        path,
        ProjectConfig,
        what="project config",
        example="the demo's conveyor.yaml",
        missing_hint="Create conveyor.yaml (see the one in Conveyor's repository for the demo), or pass --config.",
        known=_KEYS,
        hint=_hint,
    )
    if not config.data.is_absolute():
        config = config.model_copy(update={"data": (path.parent / config.data)})
    if check_data:
        config.estimator.build()
        if config.data.is_file():
            config.check_columns(read_columns(config.data))
    return config


# the nested keys a project config may hold: an unknown one is matched against these and the top level's
_KEYS = {
    "numeric",
    "categorical",
    "boolean",
    "class",
    "params",
    "method",
    "test_fraction",
    "feature",
    "direction",
    "delta",
    "min_share",
}


def _hint(exc: ValidationError) -> str:
    kinds = {e["type"] for e in exc.errors()}
    if "missing" in kinds:
        return (
            "A project config needs model_name, task, data, entity_key, event_timestamp, target, "
            "features (numeric/categorical lists) and estimator (class, params)."
        )
    if "extra_forbidden" in kinds:
        return "Remove or rename the unknown key(s); the demo's conveyor.yaml shows every key."
    return "Fix the value(s) named above; the demo's conveyor.yaml shows a working example."
