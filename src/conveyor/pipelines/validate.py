"""Validation: the data must pass its Great Expectations suite before anything is trained on it.

The suite is JSON in ``policies/expectations/<model>.json`` (Great Expectations' own format:
``{"name", "expectations": [{"type", "kwargs"}]}``); ``starter_suite`` writes a first one from
the config and the data. One expectation is added at run time because it depends on the clock:
no event may lie in the future.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from conveyor.pipelines.data import read_data
from conveyor.pipelines.validation_page import write_validation_page
from conveyor.policies.errors import ConveyorError, PolicyInvalid
from conveyor.policies.project import ProjectConfig
from conveyor.registry.digests import canonical_json, file_digest, json_digest

__all__ = [
    "Failure",
    "ValidationResult",
    "load_suite",
    "starter_suite",
    "suite_path",
    "validate_data",
    "write_starter_suite",
]

_NUMERIC_TYPES = [
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "Float32",
    "Float64",
]
_TEXT_TYPES = ["object", "str", "string", "category"]


@dataclass(frozen=True)
class Failure:
    """One expectation the data did not meet."""

    expectation: str
    column: str | None
    unexpected_count: int | None
    unexpected_percent: float | None
    observed: Any
    examples: list[Any] = field(default_factory=list)

    def describe(self) -> str:
        where = f" on `{self.column}`" if self.column else ""
        counts = (
            f": {self.unexpected_count} unexpected ({self.unexpected_percent:.2f}%)"
            if self.unexpected_count is not None and self.unexpected_percent is not None
            else (f": observed {self.observed!r}" if self.observed is not None else "")
        )
        shown = f", e.g. {', '.join(map(repr, self.examples[:3]))}" if self.examples else ""
        return f"{self.expectation}{where}{counts}{shown}"


@dataclass(frozen=True)
class ValidationResult:
    """What validation found, where its report is, and the report's content address."""

    success: bool
    evaluated: int
    failures: list[Failure]
    report: Path
    digest: str  # of the JSON report
    suite_digest: str
    page: Path  # our own page of the run: self-contained, named by dataset and run


def suite_path(config: ProjectConfig, root: Path) -> Path:
    """Where the project's expectation suite lives."""
    return root / "policies" / "expectations" / f"{config.model_name}.json"


def load_suite(path: Path) -> dict[str, Any]:
    """Read a suite file and check its shape; a malformed suite is a clear error."""
    if not path.is_file():
        raise PolicyInvalid(
            f"No expectation suite at {path}.",
            hint="Write a starter suite with `conveyor expectations init`, then review it.",
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyInvalid(
            f"{path} is not valid JSON: {exc}.",
            hint="Fix the syntax, or re-create it with `conveyor expectations init --force`.",
        ) from None
    expectations = document.get("expectations") if isinstance(document, dict) else None
    if not isinstance(expectations, list) or not expectations:
        raise PolicyInvalid(
            f"{path} has no `expectations` list.",
            hint='A suite is {"name": ..., "expectations": [{"type": ..., "kwargs": {...}}]}.',
        )
    for index, item in enumerate(expectations):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("type"), str)
            or not isinstance(item.get("kwargs", {}), dict)
        ):
            raise PolicyInvalid(
                f"Expectation #{index + 1} in {path} is malformed: each needs a `type` (string) and `kwargs` (mapping).",
                hint="Compare it with the others in the file, or re-create the suite.",
            )
    return document


def _build_suite(document: dict[str, Any], path: Path, extra: list[dict[str, Any]]) -> Any:
    import great_expectations as gx
    from great_expectations.expectations.registry import get_expectation_impl

    suite = gx.ExpectationSuite(name=str(document.get("name") or path.stem))
    for index, item in enumerate([*document["expectations"], *extra]):
        try:
            implementation = get_expectation_impl(item["type"])
            suite.add_expectation(implementation(**item.get("kwargs", {})))
        except Exception as exc:  # GE raises several kinds for unknown types and bad kwargs
            detail = str(exc).strip().splitlines()[0][:200].rstrip(".")
            raise PolicyInvalid(
                f"Expectation #{index + 1} ({item['type']}) in {path} is not valid: {detail}.",
                hint="Check the expectation's name and arguments against Great Expectations 1.x.",
            ) from None
    return suite


def validate_data(
    frame: pd.DataFrame, config: ProjectConfig, suite_file: Path, reports: Path, *, now: datetime | None = None
) -> ValidationResult:
    """Run the suite (plus the no-future-events check) and write the JSON report, its HTML page
    (``<report>.html``). Great Expectations' Data Docs are not built: they load their styles and
    scripts from CDNs and show an empty index offline; the page says what they would."""
    document = load_suite(suite_file)
    now = now or datetime.now(UTC)
    runtime = [
        {
            "type": "expect_column_max_to_be_between",
            "kwargs": {"column": config.event_timestamp, "max_value": now.isoformat()},
            "meta": {"conveyor": "no event may lie in the future"},
        }
    ]
    context, batch_definition = _context()
    suite = context.suites.add(_build_suite(document, suite_file, runtime))
    result = _run(context, batch_definition, suite, frame)

    failures = [_failure(r) for r in result["results"] if not r["success"]]
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    report_dir = reports / "validation"
    report_dir.mkdir(parents=True, exist_ok=True)
    report = report_dir / f"{config.model_name}-{stamp}.json"
    report.write_bytes(canonical_json(result))
    page = write_validation_page(
        result,
        dataset=config.data.name,
        rows=len(frame),
        path=report.with_suffix(".html"),
        model=config.model_name,
        reports=reports,
    )
    return ValidationResult(
        success=bool(result["success"]),
        evaluated=len(result["results"]),
        failures=failures,
        report=report,
        digest=file_digest(report),
        suite_digest=json_digest(document),
        page=page,
    )


def _context() -> tuple[Any, Any]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    # No docs site: the ephemeral default would write a new temp folder every run.
    project = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={},
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(project_config=project, mode="ephemeral")
    asset = context.data_sources.add_pandas("conveyor").add_dataframe_asset("data")
    return context, asset.add_batch_definition_whole_dataframe("all")


def _run(context: Any, batch_definition: Any, suite: Any, frame: pd.DataFrame) -> dict[str, Any]:
    import great_expectations as gx

    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch_definition, suite=suite, name=f"{suite.name}-validation")
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite.name}-checkpoint",
            validation_definitions=[definition],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    (validation,) = outcome.run_results.values()
    return json.loads(json.dumps(validation.to_json_dict(), default=str))


def _failure(result: dict[str, Any]) -> Failure:
    config, found = result["expectation_config"], result.get("result") or {}
    kwargs = config.get("kwargs", {})
    column = kwargs.get("column") or (", ".join(kwargs["column_list"]) if kwargs.get("column_list") else None)
    exception = (result.get("exception_info") or {}).get("exception_message")
    return Failure(
        expectation=config["type"],
        column=column,
        unexpected_count=found.get("unexpected_count"),
        unexpected_percent=found.get("unexpected_percent"),
        observed=found.get("observed_value", exception),
        examples=list(found.get("partial_unexpected_list") or [])[:5],
    )


def starter_suite(config: ProjectConfig, frame: pd.DataFrame) -> dict[str, Any]:
    """A first suite from the config and the data: people review and tighten it."""
    expectations: list[dict[str, Any]] = []

    def expect(kind: str, **kwargs: Any) -> None:
        expectations.append({"type": kind, "kwargs": kwargs})

    expect("expect_table_row_count_to_be_between", min_value=max(1, len(frame) // 10))
    for column in config.columns:
        expect("expect_column_to_exist", column=column)
    expect("expect_compound_columns_to_be_unique", column_list=[config.entity_key, config.event_timestamp])
    for column in (config.entity_key, config.event_timestamp, config.target):
        expect("expect_column_values_to_not_be_null", column=column)
    for column in config.features.all:
        present = 1 - float(frame[column].isna().mean())
        mostly = math.floor((present - max(0.02, 0.1 * present)) * 1000 + 1e-9) / 1000
        if mostly > 0:  # a column mostly empty gets no null check rather than one that checks nothing
            expect("expect_column_values_to_not_be_null", column=column, mostly=mostly)
    numeric = list(config.features.numeric) + ([config.target] if config.task == "regression" else [])
    for column in numeric:
        expect(
            "expect_column_values_to_be_in_type_list", column=column, type_list=_types(_NUMERIC_TYPES, frame[column])
        )
        values = pd.to_numeric(frame[column], errors="coerce").dropna()
        if values.empty:
            continue
        low, high = float(values.min()), float(values.max())
        margin = 0.2 * (high - low)
        bounds = {"min_value": low - margin if low < 0 or low - margin >= 0 else 0.0, "max_value": high + margin}
        expect(
            "expect_column_values_to_be_between",
            column=column,
            mostly=0.99,
            **{k: round(v, 6) for k, v in bounds.items()},
        )
    for column in config.features.categorical:
        expect("expect_column_values_to_be_in_type_list", column=column, type_list=_types(_TEXT_TYPES, frame[column]))
        values = sorted(str(v) for v in frame[column].dropna().unique())
        if len(values) <= 200:
            expect("expect_column_values_to_be_in_set", column=column, value_set=values, mostly=0.95)
    for column in config.features.boolean:
        expect("expect_column_values_to_be_in_set", column=column, value_set=[False, True])
    if config.task == "classification":
        labels = sorted(frame[config.target].dropna().unique().tolist())
        expect("expect_column_values_to_be_in_set", column=config.target, value_set=labels)
    return {"name": config.model_name, "expectations": expectations}


def _types(usual: list[str], values: pd.Series) -> list[str]:
    """The usual type names of a kind of column, plus the one this column has, as Great Expectations
    names it (pandas' categorical dtype is "CategoricalDtypeType", a nullable string "StringDtype")."""
    dtype = values.dtype
    observed = [getattr(dtype, "name", str(dtype)), type(dtype).__name__, getattr(dtype.type, "__name__", "")]
    return usual + [name for name in dict.fromkeys(observed) if name and name not in usual]


def write_starter_suite(
    config: ProjectConfig, root: Path, data: Path | None = None, *, force: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Write ``starter_suite`` of ``data`` (default: the config's) where the project's suite lives;
    an existing suite is kept unless ``force``. Returns where it went and the suite."""
    import json

    target = suite_path(config, root)
    if target.exists() and not force:
        raise ConveyorError(f"{target} already exists.", hint="Edit it, or pass --force to replace it.")
    suite = starter_suite(config, read_data((data or config.data).absolute(), config))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(suite, indent=2) + "\n")
    return target, suite
