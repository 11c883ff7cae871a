"""Feast point-in-time joins: no feature value from a label's future; dropped rows counted. The same
with either engine of the offline store (its file store on pandas, or DuckDB): a setting."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from conveyor.pipelines.features import FeastStores, build_training_set, open_store
from conveyor.policies.project import load_project


def tiny_project(tmp_path: Path) -> Path:
    config = {
        "model_name": "tiny",
        "task": "regression",
        "data": "data.csv",
        "entity_key": "user",
        "event_timestamp": "ts",
        "target": "y",
        "features": {"numeric": ["x"], "categorical": ["c"]},
        "estimator": {"class": "sklearn.linear_model.Ridge", "params": {}},
        "feature_ttl_days": 10,
    }
    path = tmp_path / "conveyor.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def at(day: int) -> pd.Timestamp:
    return pd.Timestamp("2026-03-01", tz="UTC") + pd.Timedelta(days=day)


ENGINES = pytest.mark.parametrize("engine", ["file", "duckdb"])


@ENGINES
def test_join_uses_the_latest_value_at_or_before_each_label(tmp_path: Path, engine: str) -> None:
    config_file = tiny_project(tmp_path)
    config = load_project(config_file)
    features = pd.DataFrame(
        {
            "user": ["u1", "u1", "u1", "u2"],
            "ts": [at(0), at(5), at(9), at(0)],
            "y": [0.0] * 4,
            "x": [1.0, 5.0, 9.0, 100.0],
            "c": ["a", "b", "c", "z"],
        }
    )
    store, view = open_store(config, tmp_path / "feast", features, config_file, FeastStores(engine=engine))
    labels = pd.DataFrame(
        {
            "user": ["u1", "u1", "u1", "u2", "u3"],
            "ts": [at(4), at(5), at(8), at(3), at(3)],  # u3 has no features at all
            "y": [1.0, 2.0, 3.0, 4.0, 5.0],
            "x": [None] * 5,
            "c": [None] * 5,
        }
    )
    result = build_training_set(store, view, config, labels, tmp_path / "out")

    got = result.frame.set_index(["user", "ts"])
    assert got.loc[("u1", at(4)), "x"] == 1.0  # not 5.0: that value is from day 5, after the label
    assert got.loc[("u1", at(5)), "x"] == 5.0  # a value stamped exactly at the label time is known
    assert got.loc[("u1", at(8)), "x"] == 5.0  # not 9.0, from the label's future
    assert got.loc[("u2", at(3)), "c"] == "z"
    assert (result.rows_in, result.rows_out, result.dropped) == (5, 4, 1)
    assert list(result.frame["y"]) == [1.0, 2.0, 3.0, 4.0]  # input order kept
    assert result.path.is_file() and result.digest.startswith("sha256:")


@ENGINES
def test_values_older_than_the_ttl_are_not_joined(tmp_path: Path, engine: str) -> None:
    config_file = tiny_project(tmp_path)
    config = load_project(config_file)
    features = pd.DataFrame({"user": ["u1"], "ts": [at(0)], "y": [0.0], "x": [1.0], "c": ["a"]})
    store, view = open_store(config, tmp_path / "feast", features, config_file, FeastStores(engine=engine))
    labels = pd.DataFrame(
        {"user": ["u1", "u1"], "ts": [at(2), at(30)], "y": [1.0, 2.0], "x": [None] * 2, "c": [None] * 2}
    )
    result = build_training_set(store, view, config, labels, tmp_path / "out")
    assert (result.rows_out, result.dropped) == (1, 1)


def test_both_engines_build_the_same_training_set_from_the_demo_data(tmp_path: Path, small_loans: Path) -> None:
    from conveyor.pipelines.data import read_data
    from tests.conftest import REPO

    config_file = tmp_path / "conveyor.yaml"
    config_file.write_text((REPO / "conveyor.yaml").read_text())
    config = load_project(config_file)
    frame = read_data(small_loans, config)
    digests = {}
    for engine in ("file", "duckdb"):
        store, view = open_store(config, tmp_path / engine, frame, config_file, FeastStores(engine=engine))
        digests[engine] = build_training_set(store, view, config, frame, tmp_path / engine / "out").digest
    assert digests["file"] == digests["duckdb"]
