"""The demo data: deterministic (the bytes DVC recorded), realistic, with signal and drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conveyor.demo.data import DEMO_DATASETS, generate, write_csv
from conveyor.registry.digests import file_hashes
from conveyor.registry.dvc_files import dvc_recorded_md5
from tests.conftest import REPO


@pytest.fixture(scope="module")
def frames(demo_files: dict[str, Path]) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(path, parse_dates=["event_timestamp"]) for name, path in demo_files.items()}


@pytest.mark.parametrize("name", list(DEMO_DATASETS))
def test_generator_is_deterministic_and_matches_the_dvc_record(
    name: str, demo_files: dict[str, Path], tmp_path: Path
) -> None:
    again = tmp_path / "again.csv"
    write_csv(generate(DEMO_DATASETS[name]), again)
    first, second = file_hashes(demo_files[name], "md5"), file_hashes(again, "md5")
    assert first == second
    assert dvc_recorded_md5(REPO / DEMO_DATASETS[name].path) == first["md5"]


def test_the_dataset_looks_like_loan_applications(frames: dict[str, pd.DataFrame]) -> None:
    data = frames["v1"]
    assert len(data) >= 50_000
    span = data["event_timestamp"].max() - data["event_timestamp"].min()
    assert span >= pd.Timedelta(days=180)
    assert not data.duplicated(["applicant_id", "event_timestamp"]).any()
    assert data["applicant_id"].nunique() < len(data)  # applicants come back: entities repeat
    missing = data.isna().mean()
    assert 0 < missing["credit_score"] < 0.1 and 0 < missing["home_ownership"] < 0.05
    assert 0.05 < data["defaulted"].mean() < 0.4


def test_label_carries_signal_in_the_expected_direction(frames: dict[str, pd.DataFrame]) -> None:
    data = frames["v1"]
    low, high = data["credit_score"].quantile([0.2, 0.8])
    assert (
        data.loc[data.credit_score <= low, "defaulted"].mean()
        > 2 * data.loc[data.credit_score >= high, "defaulted"].mean()
    )
    assert np.corrcoef(data["debt_to_income"], data["defaulted"])[0, 1] > 0.1


def test_drifted_batch_is_later_and_shifted(frames: dict[str, pd.DataFrame]) -> None:
    before, after = frames["v1"], frames["drift"]
    assert after["event_timestamp"].min() > before["event_timestamp"].max()
    assert set(after["purpose"]) - set(before["purpose"]) == {"crypto"}
    assert after["annual_income"].median() < 0.9 * before["annual_income"].median()
    assert after["interest_rate"].mean() > before["interest_rate"].mean() + 2
