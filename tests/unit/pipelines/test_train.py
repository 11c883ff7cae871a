"""The time split: the holdout is the latest rows, never a random sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.data import read_data
from pipelines.train import split_by_time
from policies.errors import DataInvalid
from policies.project import ProjectConfig


def test_the_holdout_is_the_latest_rows_and_too_few_rows_are_refused(loans: Path, config: ProjectConfig) -> None:
    frame = read_data(loans, config)
    train, holdout = split_by_time(config, frame)
    assert train[config.event_timestamp].max() <= holdout[config.event_timestamp].min()
    assert len(holdout) == pytest.approx(len(frame) * config.split.test_fraction, abs=1)
    with pytest.raises(DataInvalid, match="Too few rows"):
        split_by_time(config, frame.head(12))
