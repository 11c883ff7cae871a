"""Validation: a suite's shape is checked, and the starter suite fits its own data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.data import read_data
from pipelines.validate import load_suite, starter_suite, validate_data
from policies.errors import PolicyInvalid
from policies.project import ProjectConfig


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
