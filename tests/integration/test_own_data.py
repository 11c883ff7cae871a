"""A user's own data all the way, by ``conveyor init`` only: data shaped like real public datasets
(a boolean column with gaps, no event time; a regression with neither key nor time whose features
leak the target and carry an identifier), initialised, trained, promoted, served, labelled and
checked for drift as a user would, with the request that init prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.registry.inference_log import read_log
from conveyor.serving.auth import ApiKeys
from tests.service import Service

pytestmark = pytest.mark.slow
runner = CliRunner()


def conveyor(*args: str):
    return runner.invoke(app, list(args))


def subscriptions(n: int = 3_000) -> pd.DataFrame:
    """Customers with a key but no event time; ``autopay`` is true/false with gaps (a CSV's
    True/False/blank), and it matters to the outcome."""
    rng = np.random.default_rng(3)
    autopay = rng.random(n) < 0.6
    balance = rng.gamma(2.0, 50.0, n).round(2)
    plan = rng.choice(["basic", "plus", "pro"], n)
    risk = -1.0 + 1.6 * (~autopay) + 0.01 * (balance - 100) + (plan == "basic") * 0.5
    churned = (rng.random(n) < 1 / (1 + np.exp(-risk))).astype(int)
    frame = pd.DataFrame(
        {"customer_id": [f"c{i:05d}" for i in range(n)], "autopay": autopay, "balance": balance, "plan": plan}
    )
    frame["autopay"] = frame["autopay"].astype(object)
    frame.loc[rng.random(n) < 0.05, "autopay"] = None  # blanks in the CSV
    frame["churned"] = churned
    return frame


def test_a_boolean_column_and_no_event_time_go_all_the_way(tmp_path: Path) -> None:
    data = tmp_path / "subscriptions.csv"
    frame = subscriptions()
    frame.to_csv(data, index=False)
    folder = tmp_path / "churn"
    made = conveyor("init", str(folder), "--from-data", str(data), "--json")
    assert made.exit_code == 0, made.output
    summary = json.loads(made.stdout)
    config = yaml.safe_load((folder / "conveyor.yaml").read_text())
    assert config["features"]["boolean"] == ["autopay"] and "autopay" not in config["features"]["numeric"]
    assert config["entity_key"] == "customer_id" and config["generated"] == [config["event_timestamp"]]
    example = summary["example"]["rows"][0]
    first = frame[frame["autopay"].notna()].iloc[0]  # the first complete row
    assert example["customer_id"] == first.customer_id and example["autopay"] is bool(first.autopay)
    assert "event_timestamp" not in example

    project = ["--config", str(folder / "conveyor.yaml")]
    trained = conveyor(*project, "train", "--json")
    assert trained.exit_code == 0, trained.output
    model, version = json.loads(trained.stdout)["name"], json.loads(trained.stdout)["version"]
    assert model == config["model_name"] == "subscriptions"
    promoted = conveyor(*project, "promote", f"{model}/{version}", "--to", "champion")
    assert promoted.exit_code == 0, promoted.output

    home = Path(str(tmp_path / ".conveyor"))
    keys = ApiKeys(home / "serving" / "api-keys.json")
    key = keys.create("app", per_second=10_000, burst=10_000)
    service = Service(folder / "conveyor.yaml", env={"CONVEYOR_HOME": str(home)})
    service.start()
    try:
        headers = {"Authorization": f"Bearer {key}"}
        answered = httpx.post(f"{service.url}/predict", json=summary["example"], headers=headers, timeout=30)
        assert answered.status_code == 200, answered.text  # init's own example, JSON true as the data has it
        as_number = {"rows": [{**example, "autopay": 1.0}]}
        refused = httpx.post(f"{service.url}/predict", json=as_number, headers=headers, timeout=30)
        assert refused.status_code == 400 and "autopay" in refused.text
        traffic = frame.tail(600)
        for start in range(0, len(traffic), 50):
            rows = [
                {
                    "customer_id": r.customer_id,
                    "autopay": None if r.autopay is None else bool(r.autopay),
                    "balance": float(r.balance),
                    "plan": r.plan,
                }
                for r in traffic.iloc[start : start + 50].itertuples()
            ]
            reply = httpx.post(f"{service.url}/predict", json={"rows": rows}, headers=headers, timeout=30)
            assert reply.status_code == 200, reply.text
    finally:
        service.stop()
    logged = read_log(home / "inference" / model)
    assert len(logged) == 601
    assert set(logged["feature.autopay"].dropna().unique()) == {True, False}  # as sent, as in the data

    labels = tmp_path / "labels.csv"
    frame.tail(600)[["customer_id", "churned"]].to_csv(labels, index=False)  # what a user has: key and outcome
    added = conveyor(*project, "labels", "add", str(labels), "--no-retrain", "--json")
    assert added.exit_code == 0, added.output
    outcome = json.loads(added.stdout)
    assert outcome["matched"] == 600, outcome
    assert outcome["quality"]["labelled"] == 600 and outcome["quality"]["value"] is not None

    checked = conveyor(*project, "drift", "check", "--window", "601", "--no-retrain", "--json")
    assert checked.exit_code in (0, 1), checked.output
    drift = json.loads(checked.stdout)
    columns = {c["column"]: c for c in drift["columns"]}
    assert not columns["autopay"]["drifted"], columns["autopay"]  # the same true/false values training saw


def test_a_leaking_feature_and_an_identifier_are_warned_of_and_labels_need_the_row_number(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = 2_000
    size = rng.gamma(3.0, 40.0, n).round(1)
    price = (1_000 * size + rng.normal(0, 40_000, n)).round(0)
    frame = pd.DataFrame(
        {
            "size": size,
            "rooms": rng.integers(1, 7, n),
            "account_number": rng.permutation(np.arange(10_000, 10_000 + n)),
            "price_per_m2": price / 1_000 + rng.normal(0, 0.01, n),  # the price again, under another name
            "price": price,
        }
    )
    data = tmp_path / "houses.csv"
    frame.to_csv(data, index=False)
    folder = tmp_path / "houses"
    made = conveyor("init", str(folder), "--from-data", str(data), "--target", "price", "--json")
    assert made.exit_code == 0, made.output
    warnings = json.loads(made.stdout)["warnings"]
    assert any(w.startswith("`price_per_m2` alone predicts `price` almost perfectly") for w in warnings), warnings
    assert any(w.startswith("`account_number` is a whole number unique") for w in warnings), warnings
    assert not any("`size`" in w or "`rooms`" in w for w in warnings), warnings
    text = (folder / "conveyor.yaml").read_text()
    assert re.search(r"^# WARNING: `price_per_m2` alone predicts", text, re.M)
    config = yaml.safe_load(text)
    assert config["generated"] == ["row_id", "event_timestamp"]

    labels = tmp_path / "labels.csv"
    frame[["price"]].head(10).to_csv(labels, index=False)
    result = conveyor("--config", str(folder / "conveyor.yaml"), "labels", "add", str(labels))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert (
        "lacks the column(s) row_id" in result.output and "event_timestamp" not in result.output.split("Labels need")[1]
    )
    assert "only where the client sent `row_id` with the request" in result.output
