"""The training flow for real: Prefect flow runs, MLflow on SQLite, Feast, GE, signatures, the ledger."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.pipelines.flows import reporting_stages
from conveyor.pipelines.training import STAGES, run_training
from conveyor.registry.ledger import Ledger
from conveyor.registry.pages import read_heading
from tests.browser import chromium
from tests.conftest import open_workspace

pytestmark = pytest.mark.slow
runner = CliRunner()


def conveyor(project: Path, *args: str):
    return runner.invoke(app, ["--config", str(project / "conveyor.yaml"), *args])


def ledger_for(tmp_path: Path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / '.conveyor' / 'ledger.db'}")


def mlflow_client(tmp_path: Path):
    """A client on this test's own MLflow store, whatever the process-wide tracking URI is."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / '.conveyor' / 'mlflow.db'}")


def registry_versions(tmp_path: Path, name: str = "loan-default") -> list:
    return mlflow_client(tmp_path).search_model_versions(f"name = '{name}'")


def request(project: Path, tmp_path: Path) -> Any:
    return open_workspace(project, tmp_path / ".conveyor")


def test_train_registers_a_signed_version_whose_lineage_reaches_the_data(
    prefect_api: None, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("CONVEYOR_FLOWS", "prefect")  # the run as a Prefect flow run, which this test reads back

    result = conveyor(project, "train", "--metrics", str(tmp_path / "metrics.json"))
    assert result.exit_code == 0, result.output
    assert "Registered loan-default version 1 as @candidate" in result.stdout

    version = mlflow_client(tmp_path).get_model_version_by_alias("loan-default", "candidate")
    tags = version.tags
    for tag in (
        "conveyor.model_digest",
        "conveyor.bundle_digest",
        "conveyor.provenance_digest",
        "conveyor.data_digest",
        "conveyor.key_fingerprint",
        "conveyor.version_digest",
    ):
        assert tags[tag].startswith("sha256:"), tag
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["roc_auc"] > 0.75

    lineage = conveyor(project, "lineage", tags["conveyor.version_digest"], "--up", "--json")
    assert lineage.exit_code == 0, lineage.output
    kinds = [e["kind"] for e in json.loads(lineage.stdout)["upstream"]["events"]]
    for kind in (
        "model.registered",
        "model.signed",
        "model.trained",
        "features.built",
        "data.validated",
        "dataset.versioned",
    ):
        assert kind in kinds
    data_lineage = conveyor(project, "lineage", str(project / "data" / "loans.csv"), "--down", "--json")
    downstream = {e["kind"] for e in json.loads(data_lineage.stdout)["downstream"]["events"]}
    assert "model.registered" in downstream

    with ledger_for(tmp_path) as ledger:
        assert ledger.verify_chain().ok
    with get_client(sync_client=True) as prefect:
        runs = [r for r in prefect.read_flow_runs() if r.name and r.state and r.state.is_completed()]
        assert "train loan-default (by hand)" in [r.name for r in runs], "a named Prefect flow run"
        flow_run = next(r for r in runs if r.name == "train loan-default (by hand)")
        stages = ("validate", "features", "train", "evaluate", "sign", "register")
        artifacts = {a.key: a for a in prefect.read_artifacts(artifact_filter=_of_run(flow_run.id))}
        assert set(artifacts) == {f"loan-default-{stage}" for stage in stages}, "each stage's report, as an artifact"
        assert "expectations met" in artifacts["loan-default-validate"].data
        assert f"`{version.run_id}`" in artifacts["loan-default-train"].data
        assert "roc_auc" in artifacts["loan-default-evaluate"].data
        assert artifacts["loan-default-register"].description == (
            "loan-default, register: loan-default version 1 registered as @candidate"
        )
        lines = _logged(prefect, flow_run.id, len(stages))
        assert [line.split(":")[0] for line in lines] == list(stages), lines

    # MLflow's UI: the experiment opens on its runs, and the run says what it made
    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("loan-default")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.get_run(version.run_id)
    assert run.info.run_name == "train loan-default v1 (by hand)"
    note = run.data.tags["mlflow.note.content"]
    assert "Training of loan-default (classification" in note and "Registered as loan-default version 1" in note
    logged = {a.path for folder in ("evaluation", "validation") for a in client.list_artifacts(run.info.run_id, folder)}
    for plot in ("roc.png", "calibration.png", "confusion.png"):
        assert f"evaluation/{plot}" in logged, logged
    assert f"evaluation/loan-default-{run.info.run_id}.json" in logged
    assert any(path.startswith("validation/") and path.endswith(".json") for path in logged)
    assert any(path.startswith("validation/") and path.endswith(".html") for path in logged)


def _of_run(flow_run_id: Any) -> Any:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    return ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))


def _logged(prefect: Any, flow_run_id: Any, count: int) -> list[str]:
    """The flow run's log lines in the Prefect API (sent in batches: wait for ``count``, up to 20 s)."""
    import time

    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + 20
    while True:
        logs = prefect.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        lines = [log.message for log in sorted(logs, key=lambda log: log.timestamp)]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def test_second_run_is_compared_with_the_champion(prefect_api: None, project: Path, tmp_path: Path) -> None:
    told: list[tuple[str, int, int]] = []
    with reporting_stages(lambda *stage: told.append(stage)):  # what a progress display is told
        first = run_training(request(project, tmp_path))
    assert told == [(name, number, len(STAGES)) for number, name in enumerate(STAGES, 1)]
    mlflow_client(tmp_path).set_registered_model_alias(first.name, "champion", first.version)
    second = run_training(request(project, tmp_path))
    assert second.version == "2" and second.champion_version == first.version
    same = {k: v for k, v in second.champion_metrics.items() if not k.startswith("gain_")}
    assert same == pytest.approx(first.metrics)  # same seed, same data, same holdout
    interval = (second.champion_metrics["gain_low_roc_auc"], second.champion_metrics["gain_high_roc_auc"])
    assert interval == (0.0, 0.0)  # the same model: no gain on any resample
    assert second.metrics == pytest.approx(first.metrics)


def test_a_champion_that_does_not_verify_is_not_loaded(prefect_api: None, project: Path, tmp_path: Path) -> None:
    first = run_training(request(project, tmp_path))
    client = mlflow_client(tmp_path)
    client.set_registered_model_alias(first.name, "champion", first.version)
    model_id = client.get_model_version(first.name, first.version).source.split("/")[-1]
    stored = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    (stored / "model.skops").write_bytes(b"\x00" + (stored / "model.skops").read_bytes()[1:])
    result = conveyor(project, "train")
    assert result.exit_code == 1, result.output
    assert "The champion, loan-default version 1, does not verify (signature:" in result.stderr
    assert [v.version for v in registry_versions(tmp_path)] == [1]


def write_bad(kind: str, project: Path) -> Path:
    source = (project / "data" / "loans.csv").read_text().splitlines(keepends=True)
    header, rows = source[0], source[1:]
    columns = header.strip().split(",")
    target = project / "data" / "bad.csv"

    def edit(column: str, value: str, count: int) -> list[str]:
        index = columns.index(column)
        out = []
        for i, row in enumerate(rows):
            cells = row.rstrip("\n").split(",")
            if i < count:
                cells[index] = value
            out.append(",".join(cells) + "\n")
        return out

    if kind == "missing-column":
        index = columns.index("purpose")
        target.write_text(
            "".join(
                ",".join(c for j, c in enumerate(line.rstrip("\n").split(",")) if j != index) + "\n" for line in source
            )
        )
    elif kind == "wrong-dtype":
        target.write_text(header + "".join(edit("age", "forty", 300)))
    elif kind == "all-null-column":
        target.write_text(header + "".join(edit("credit_score", "", len(rows))))
    elif kind == "empty-file":
        target.write_text("")
    elif kind == "non-utf8":
        target.write_bytes(header.encode() + b"A0001,2026-01-01T00:00:00Z,\xff\xfe\xfa garbled\n" * 5)
    elif kind == "duplicate-rows":
        target.write_text(header + "".join(rows) + "".join(rows[:40]))
    elif kind == "future-labels":
        target.write_text(header + "".join(edit("event_timestamp", "2031-01-01T00:00:00Z", 25)))
    return target


BAD_DATA = {
    # kind: (exit code, what the message must say, does the ledger record a failed validation)
    "missing-column": (2, "does not have: 'purpose'", False),
    "wrong-dtype": (1, "expect_column_values_to_be_in_type_list on `age`", True),
    "all-null-column": (1, "expect_column_values_to_not_be_null on `credit_score`", True),
    "empty-file": (1, "is empty", False),
    "non-utf8": (1, "not UTF-8", False),
    "duplicate-rows": (1, "expect_compound_columns_to_be_unique on `applicant_id, event_timestamp`", True),
    "future-labels": (1, "expect_column_max_to_be_between on `event_timestamp`", True),
}


@pytest.mark.parametrize("kind", list(BAD_DATA))
def test_bad_data_is_refused_clearly_and_nothing_is_registered(
    prefect_api: None, project: Path, tmp_path: Path, kind: str
) -> None:
    code, message, recorded = BAD_DATA[kind]
    bad = write_bad(kind, project)
    result = conveyor(project, "train", "--data", str(bad))
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.output
    assert registry_versions(tmp_path) == []
    with ledger_for(tmp_path) as ledger:
        assert ledger.verify_chain().ok
        kinds = [e.kind for e in ledger.iter_events()]
        assert not {"model.trained", "model.registered"} & set(kinds)
        validated = [e for e in ledger.iter_events() if e.kind == "data.validated"]
        assert bool(validated) == recorded
        assert all(e.details["success"] is False for e in validated)


def test_failed_validation_names_counts_and_examples_and_writes_reports(
    prefect_api: None, project: Path, tmp_path: Path
) -> None:
    result = conveyor(project, "train", "--data", str(write_bad("wrong-dtype", project)))
    assert result.exit_code == 1
    assert "Nothing was trained" in result.stderr
    reports = list((tmp_path / ".conveyor" / "reports" / "validation").glob("*.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["success"] is False
    assert not (tmp_path / ".conveyor" / "reports" / "data-docs").exists()  # not offered: they need CDNs
    assert "unexpected (" in result.stderr and "e.g. 'forty'" in result.stderr
    page = reports[0].with_suffix(".html")  # our own page, named by dataset, suite and run
    assert f"Report: {page}" in " ".join(result.stderr.split())
    text = page.read_text()
    assert "<title>Validation of bad.csv against loan-default: FAILED</title>" in text
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    dom = chromium(page, tmp_path)
    rows = re.findall(r'<tr class="(met|failed)"><td>\w+</td><td><code>([^<]*)</code></td><td>([^<]+)</td>', dom)
    failed = [r for r in rows if r[0] == "failed"]
    assert failed and rows[: len(failed)] == failed, "failures first"
    assert ("failed", "age", "expect_column_values_to_be_in_type_list") in failed
    assert "forty" in dom and re.search(r"\d+ of \d+ expectations met; \d+ failed", dom)


def test_config_naming_a_column_the_data_lacks(prefect_api: None, project: Path, tmp_path: Path) -> None:
    config = project / "conveyor.yaml"
    config.write_text(config.read_text().replace("region]", "regoin]"))
    result = conveyor(project, "train")
    assert result.exit_code == 2
    assert "'regoin' (did you mean 'region'?)" in result.stderr
    assert registry_versions(tmp_path) == []


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        (
            '{"name": "x", "expectations": [{"type": "expect_the_moon", "kwargs": {}}]}',
            "Expectation #1 (expect_the_moon)",
        ),
        ('{"name": "x", "expectations": [{"kwargs": {}}]}', "Expectation #1 in"),
    ],
)
def test_malformed_expectation_suite(
    prefect_api: None, project: Path, tmp_path: Path, content: str, message: str
) -> None:
    (project / "policies" / "expectations" / "loan-default.json").write_text(content)
    result = conveyor(project, "train")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert registry_versions(tmp_path) == []
    with ledger_for(tmp_path) as ledger:
        assert ledger.verify_chain().ok


def test_model_failing_a_behavioural_check_is_not_signed_or_registered(
    prefect_api: None, project: Path, tmp_path: Path
) -> None:
    config = project / "conveyor.yaml"
    config.write_text(
        config.read_text().replace(
            "{feature: credit_score, direction: decrease", "{feature: credit_score, direction: increase"
        )
    )
    result = conveyor(project, "train")
    assert result.exit_code == 1, result.output
    assert "failed 1 behavioural check(s): raising credit_score by 100 should increase" in result.stderr
    assert registry_versions(tmp_path) == []
    with ledger_for(tmp_path) as ledger:
        kinds = [e.kind for e in ledger.iter_events()]
        assert "model.evaluated" in kinds and "model.signed" not in kinds
    (page,) = (tmp_path / ".conveyor" / "reports" / "evaluation").glob("loan-default-candidate-*.html")
    assert f"The evaluation's page: {page}" in " ".join(result.stderr.split())
    heading = read_heading(page)  # named by model and run: a refused candidate has no version
    assert heading is not None and heading.status == "failed" and heading.version is None
    assert heading.caused == "nothing was signed or registered"
    assert any("credit_score" in r and r.endswith("FAILED") for r in heading.reasons)
    text = page.read_text()
    assert "the 10 holdout rows it got most wrong" in text and "data:image/png;base64," in text


def test_any_dataset_a_config_describes(tmp_path: Path) -> None:
    """A regression project with none of the demo's columns goes through every stage."""
    import numpy as np
    import pandas as pd

    from conveyor.pipelines.validate import starter_suite
    from conveyor.policies.project import load_project

    rng = np.random.default_rng(3)
    n = 1_500
    frame = pd.DataFrame(
        {
            "house": [f"h{i % 400}" for i in range(n)],
            "listed_at": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 200 * 86400, n), unit="s"),
            "sqft": rng.uniform(40, 250, n).round(1),
            "rooms": rng.integers(1, 7, n),
            "city": rng.choice(["oslo", "bergen", "tromso"], n),
        }
    )
    frame["price"] = (
        frame.sqft * 3
        + frame.rooms * 20
        + frame.city.map({"oslo": 200, "bergen": 100, "tromso": 50})
        + rng.normal(0, 10, n)
    ).round(2)
    root = tmp_path / "houses"
    (root / "policies" / "expectations").mkdir(parents=True)
    frame.to_csv(root / "houses.csv", index=False)
    (root / "conveyor.yaml").write_text(
        yaml.safe_dump(
            {
                "model_name": "house-price",
                "task": "regression",
                "data": "houses.csv",
                "entity_key": "house",
                "event_timestamp": "listed_at",
                "target": "price",
                "features": {"numeric": ["sqft", "rooms"], "categorical": ["city"]},
                "estimator": {"class": "sklearn.linear_model.Ridge", "params": {"alpha": 1.0}},
                "behaviour": [{"feature": "sqft", "direction": "increase", "delta": 10}],
            }
        )
    )
    config = load_project(root / "conveyor.yaml")
    suite = starter_suite(config, pd.read_csv(root / "houses.csv"))
    (root / "policies" / "expectations" / "house-price.json").write_text(json.dumps(suite))
    outcome = run_training(request(root, tmp_path))
    assert outcome.name == "house-price" and outcome.version == "1"
    assert set(outcome.metrics) == {"rmse", "mae", "r2"} and outcome.metrics["r2"] > 0.9
