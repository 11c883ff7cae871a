"""Drift: windows of the inference log, their content address, typed features, and Evidently's
verdict on frames that did and did not shift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conveyor.monitoring.drift import DriftResult, as_features, check_drift, read_window, window_digest
from conveyor.policies.drift import DriftPolicy, load_drift_policy, parse_window
from conveyor.policies.errors import NotFound
from conveyor.policies.project import ProjectConfig, load_project
from conveyor.registry.inference_log import InferenceLog, LogEntry
from tests.conftest import REPO


@pytest.fixture(scope="module")
def project() -> ProjectConfig:
    return load_project(REPO / "conveyor.yaml", check_data=False)


@pytest.fixture(scope="module")
def policy() -> DriftPolicy:
    return load_drift_policy(REPO / "policies")


def frame(project: ProjectConfig, n: int, *, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = {c: rng.normal(100 + shift * 50, 10, n) for c in project.features.numeric}
    out |= {c: rng.choice(["a", "b", "c"] if not shift else ["c", "d"], n) for c in project.features.categorical}
    return pd.DataFrame(out)


def test_the_window_digest_is_its_content_in_its_order(project: ProjectConfig) -> None:
    one = frame(project, 50)
    assert window_digest(one) == window_digest(one.copy())
    assert window_digest(one) != window_digest(one.iloc[::-1])
    changed = one.copy()
    changed.iloc[3, 0] += 1e-9
    assert window_digest(one) != window_digest(changed)


def test_a_window_is_the_last_rows_or_the_last_seconds(tmp_path: Path, project: ProjectConfig) -> None:
    now = datetime.now(UTC)
    with InferenceLog(tmp_path / "log") as log:
        for i in range(30):
            log.record(
                LogEntry(f"r{i}", now - timedelta(minutes=30 - i), "m", "1", {"x": float(i)}, 0.5, "champion", 0)
            )
    assert list(read_window(tmp_path / "log", parse_window("10"), now)["request_id"]) == [
        f"r{i}" for i in range(20, 30)
    ]
    recent = read_window(tmp_path / "log", parse_window("5m"), now + timedelta(seconds=1))
    assert set(recent["request_id"]) == {f"r{i}" for i in range(26, 30)}  # r25 is 5 min 1 s old


def test_log_and_training_columns_are_typed_alike_and_a_missing_one_is_named(project: ProjectConfig) -> None:
    training = frame(project, 5)
    logged = training.rename(columns={c: f"feature.{c}" for c in training.columns}).astype(str)
    assert (
        as_features(logged, project, logged=True).dtypes.to_dict()
        == as_features(training, project, logged=False).dtypes.to_dict()
    )
    with pytest.raises(NotFound, match=project.features.numeric[0]):
        as_features(training.drop(columns=[project.features.numeric[0]]), project, logged=False)


def test_evidently_sees_a_shift_and_no_shift(tmp_path: Path, project: ProjectConfig, policy: DriftPolicy) -> None:
    reference = frame(project, 1_500, seed=1)
    same = check_drift(reference, frame(project, 1_500, seed=2), project, policy, tmp_path, "same")
    assert same.share < policy.drift.share  # a column may cross p < 0.05 by chance; the share decides
    moved = check_drift(reference, frame(project, 1_500, shift=1.0, seed=3), project, policy, tmp_path, "moved")
    assert moved.share >= policy.drift.share
    assert {c.column for c in moved.columns if c.drifted} >= set(project.features.numeric)
    assert moved.html.is_file() and moved.snapshot.is_file()


def test_the_verdict_sets_the_exit_code_and_says_how_much_drifted() -> None:
    result = DriftResult("drift", "m", "1", "2000 rows", 2000, 1500, None, None, share=0.5, drifted=["a", "b"])
    assert result.exit_code == 1 and "drift: 2 of" in result.describe()
    assert DriftResult("no_drift", "m", "1", "w", 1, 1, None, None).exit_code == 0
    small = DriftResult("not_enough_data", "m", "1", "2000 rows", 12, 0, None, None)
    assert small.exit_code == 3 and "not enough data: 12 rows" in small.describe()
