"""Reading a project's data: its columns, UTC times, and what cannot be parsed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conveyor.pipelines.data import read_data
from conveyor.policies.errors import DataInvalid
from conveyor.policies.project import ProjectConfig


def test_read_data_keeps_the_config_columns_with_utc_times(loans: Path, config: ProjectConfig) -> None:
    frame = read_data(loans, config)
    assert list(frame.columns) == list(config.columns)
    assert str(frame[config.event_timestamp].dt.tz) == "UTC"


def test_read_data_names_an_unparsable_time(tmp_path: Path, loans: Path, config: ProjectConfig) -> None:
    frame = pd.read_csv(loans).head(5)
    frame.loc[2, config.event_timestamp] = "not a time"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataInvalid, match="not a time"):
        read_data(bad, config)
