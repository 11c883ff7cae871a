"""Validation: a suite's shape is checked, and the starter suite fits its own data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conveyor.pipelines.data import read_data
from conveyor.pipelines.validate import load_suite, starter_suite, validate_data
from conveyor.policies.errors import PolicyInvalid
from conveyor.policies.project import ProjectConfig


def test_a_malformed_suite_is_named(tmp_path: Path) -> None:
    suite = tmp_path / "suite.json"
    for text, message in (
        ("{", "not valid JSON"),
        ('{"expectations": []}', "no `expectations` list"),
        ('{"expectations": [{"kwargs": {}}]}', "#1 .* is malformed"),
    ):
        suite.write_text(text)
        with pytest.raises(PolicyInvalid, match=message):
            load_suite(suite)


def test_the_starter_suite_passes_its_own_data_and_catches_a_broken_column(
    tmp_path: Path, loans: Path, config: ProjectConfig
) -> None:
    frame = read_data(loans, config)
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(starter_suite(config, frame)))
    assert validate_data(frame, config, suite, tmp_path / "reports").success
    broken = frame.assign(**{config.features.numeric[0]: np.nan})
    result = validate_data(broken, config, suite, tmp_path / "reports")
    assert not result.success and any(config.features.numeric[0] in f.describe() for f in result.failures)
    assert result.report.is_file() and result.digest.startswith("sha256:")


def test_the_starter_suite_fits_categorical_dtypes_and_never_checks_nothing(
    tmp_path: Path, loans: Path, config: ProjectConfig
) -> None:
    frame = read_data(loans, config)
    typed = frame.astype(dict.fromkeys(config.features.categorical, "category")).astype(
        {config.features.categorical[0]: "string"}
    )
    typed[config.features.numeric[1]] = typed[config.features.numeric[1]].mask(typed.index % 10 != 0)  # 90 % null
    parquet = tmp_path / "loans.parquet"
    typed.to_parquet(parquet)
    config = config.model_copy(update={"data": parquet})
    assert str(pd.read_parquet(parquet)[config.features.categorical[1]].dtype) == "category"
    frame = read_data(parquet, config)  # their plain values, as the model sees them
    starter = starter_suite(config, frame)
    nulls = {e["kwargs"]["column"]: e["kwargs"] for e in starter["expectations"] if e["type"].endswith("not_be_null")}
    assert all(kwargs.get("mostly", 1) > 0 for kwargs in nulls.values())
    assert nulls[config.features.numeric[1]]["mostly"] == pytest.approx(0.08)  # 10 % present, less a margin of 2 points
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(starter))
    result = validate_data(frame, config, suite, tmp_path / "reports")
    assert result.success, [f.describe() for f in result.failures]
