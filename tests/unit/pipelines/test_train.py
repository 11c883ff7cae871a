"""The time split: the holdout is the latest rows, never a random sample."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conveyor.pipelines.data import read_data
from conveyor.pipelines.train import split_by_time, split_warning
from conveyor.policies.errors import DataInvalid
from conveyor.policies.project import ProjectConfig


def test_the_holdout_is_the_latest_rows_and_too_few_rows_are_refused(loans: Path, config: ProjectConfig) -> None:
    frame = read_data(loans, config)
    train, holdout = split_by_time(config, frame)
    assert train[config.event_timestamp].max() <= holdout[config.event_timestamp].min()
    assert len(holdout) == pytest.approx(len(frame) * config.split.test_fraction, abs=1)
    with pytest.raises(DataInvalid, match="Too few rows"):
        split_by_time(config, frame.head(12))


def test_a_split_that_is_not_in_time_is_warned_of_and_a_fine_one_is_not(loans: Path, config: ProjectConfig) -> None:
    frame = read_data(loans, config)
    assert split_warning(config, *split_by_time(config, frame)) is None  # the demo's times: a split in time
    one_day = frame.assign(**{config.event_timestamp: frame[config.event_timestamp].dt.floor("365D")})
    warned = split_warning(config, *split_by_time(config, one_day))
    assert warned is not None and "every row has the event time" in warned and config.entity_key in warned
    coarse = frame.copy()
    at = config.event_timestamp
    coarse[at] = coarse[at].min()
    coarse.loc[coarse.index[:50], at] = coarse[at].min() - pd.Timedelta(days=1)  # a few earlier rows
    warned = split_warning(config, *split_by_time(config, coarse))
    assert warned is not None and f"of {len(frame):,} rows (on both sides of the cut)" in warned
