"""``conveyor init --from-data``: a data file becomes a project that validates and trains as it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conveyor.cli import app

runner = CliRunner()


def conveyor(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def houses(tmp_path: Path) -> Path:
    """A regression dataset with no entity key and no event time (scikit-learn's diabetes, bundled)."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(as_frame=True, scaled=False)
    frame = bunch.frame.rename(columns={"target": "progression"})
    frame["sex"] = frame["sex"].map({1.0: "f", 2.0: "m"})
    path = tmp_path / "diabetes.csv"
    frame.to_csv(path, index=False)
    return path


def test_init_makes_a_regression_project_from_data_without_keys_that_validates_and_trains(
    tmp_path: Path, houses: Path
) -> None:
    folder = tmp_path / "diabetes"
    made = conveyor("init", str(folder), "--from-data", str(houses), "--target", "progression", "--json")
    assert made.exit_code == 0, made.output
    summary = json.loads(made.stdout)
    config = yaml.safe_load((folder / "conveyor.yaml").read_text())
    assert config["task"] == "regression" and config["target"] == "progression"
    assert (config["entity_key"], config["event_timestamp"]) == ("row_id", "event_timestamp")
    assert "sex" in config["features"]["categorical"] and "bmi" in config["features"]["numeric"]
    assert any("seeded random order" in n for n in summary["notes"])
    prepared = pd.read_csv(folder / config["data"])
    assert prepared["row_id"].is_unique and pd.to_datetime(prepared["event_timestamp"]).is_unique
    assert not pd.to_datetime(prepared["event_timestamp"]).is_monotonic_increasing  # a random order, not file order
    promotion = yaml.safe_load((folder / "policies" / "promotion.yaml").read_text())
    drift = yaml.safe_load((folder / "policies" / "drift.yaml").read_text())
    assert promotion["beat_champion"]["metric"] == "rmse" and "r2" in promotion["thresholds"]
    assert drift["quality"]["metric"] == "rmse" and drift["quality"]["max"] > 0 and "min" not in drift["quality"]
    assert (folder / ".dvc").is_dir() and (folder / f"{config['data']}.dvc").is_file()
    stages = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]
    assert stages["train"]["params"] == [{"${config}": ["task", "features", "estimator", "split", "feature_ttl_days"]}]
    assert ".conveyor/" in (folder / ".gitignore").read_text()

    project = ["--config", str(folder / "conveyor.yaml")]
    checked = conveyor(*project, "config", "check", "--json")
    assert checked.exit_code == 0 and json.loads(checked.stdout)["model_name"] == "diabetes"
    validated = conveyor(*project, "validate", "--json")
    assert validated.exit_code == 0, validated.output  # its own starter suite: the data passes it
    assert json.loads(validated.stdout)["success"] is True
    trained = conveyor(*project, "train")
    assert trained.exit_code == 0, trained.output
    assert "Registered diabetes version 1" in trained.stdout and "rmse" in trained.stdout
    again_json = conveyor(*project, "train", "--json")
    outcome = json.loads(again_json.stdout)
    assert again_json.exit_code == 0 and outcome["version"] == "2" and "rmse" in outcome["metrics"]

    again = conveyor("init", str(folder), "--from-data", str(houses), "--target", "progression")
    assert again.exit_code == 2 and "does not overwrite" in again.output


def test_a_quality_metric_the_task_cannot_have_is_refused_and_nothing_is_recorded(tmp_path: Path, houses: Path) -> None:
    folder = tmp_path / "diabetes"
    assert conveyor("init", str(folder), "--from-data", str(houses), "--target", "progression").exit_code == 0
    drift = folder / "policies" / "drift.yaml"
    text = drift.read_text()
    drift.write_text(text.replace("metric: rmse", "metric: roc_auc").replace("max: ", "min: ", 1))
    labels = tmp_path / "labels.csv"
    pd.read_csv(folder / "data" / "diabetes-prepared.csv")[["row_id", "event_timestamp", "progression"]].to_csv(
        labels, index=False
    )
    result = conveyor("--config", str(folder / "conveyor.yaml"), "labels", "add", str(labels))
    assert result.exit_code == 2 and "roc_auc" in result.output and "regression" in result.output
    assert not (tmp_path / ".conveyor" / "ledger.db").exists() or _events(tmp_path / ".conveyor") == 0


def _events(home: Path) -> int:
    import sqlite3

    with sqlite3.connect(home / "ledger.db") as db:
        return int(db.execute("select count(*) from events").fetchone()[0])


def test_init_guesses_a_classification_project_from_a_parquet_file_with_categorical_dtypes(tmp_path: Path) -> None:
    """Coarse dates, an id column and pandas' categorical dtype: guessed, and the suite fits the data."""
    rng = np.random.default_rng(3)
    n = 600
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "signup_date": pd.to_datetime("2026-03-01") + pd.to_timedelta(rng.integers(0, 3, n), unit="D"),
            "plan": pd.Categorical(rng.choice(["basic", "pro", None], n)),
            "seats": pd.Categorical(rng.choice([1, 5, 10], n)),
            "usage": rng.normal(10, 3, n),
        }
    )
    frame["churned"] = (frame["usage"] + rng.normal(0, 2, n) < 9).astype(int)
    data = tmp_path / "customers.parquet"
    frame.to_parquet(data, index=False)
    folder = tmp_path / "churn"
    made = conveyor("init", str(folder), "--from-data", str(data), "--name", "churn", "--json")
    assert made.exit_code == 0, made.output
    config = yaml.safe_load((folder / "conveyor.yaml").read_text())
    assert (config["task"], config["target"]) == ("classification", "churned")  # named like a target
    assert (config["entity_key"], config["event_timestamp"]) == ("customer_id", "signup_date")
    assert set(config["features"]["categorical"]) == {"plan"} and set(config["features"]["numeric"]) == {
        "seats",
        "usage",
    }
    assert config["data"] == "data/customers.parquet"  # the data had its keys: copied as it is
    suite = json.loads((folder / "policies" / "expectations" / "churn.json").read_text())
    nulls = [e for e in suite["expectations"] if e["type"] == "expect_column_values_to_not_be_null"]
    assert all(e["kwargs"].get("mostly", 1) > 0 for e in nulls)
    validated = conveyor("--config", str(folder / "conveyor.yaml"), "validate")
    assert validated.exit_code == 0, validated.output


def test_init_asks_for_what_it_cannot_infer_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "plain.csv"
    pd.DataFrame({"a": range(50), "b": range(50), "c": [0, 1] * 25}).to_csv(data, index=False)
    folder = tmp_path / "plain"
    result = conveyor("init", str(folder), "--from-data", str(data))
    assert result.exit_code == 2 and "--target" in result.output and "a, b, c" in result.output
    assert not folder.exists() or not any(folder.iterdir())
    missing = conveyor("init", str(folder), "--from-data", str(tmp_path / "nope.csv"), "--target", "c")
    assert missing.exit_code == 2 and "There is no file" in missing.output
