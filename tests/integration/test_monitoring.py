"""The loop's return path on real stores: Evidently drift over an inference log, labels, the
trigger with its cooldown, retraining through every gate (or failing and changing nothing), and
the trigger through a real ``prefect server`` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from conveyor.pipelines.loop import drift_flow
from conveyor.pipelines.retraining import add_labels, check_drift
from conveyor.pipelines.training import run_training
from conveyor.policies.project import load_project
from conveyor.registry.inference_log import InferenceLog, LogEntry
from conveyor.registry.ledger import Ledger
from conveyor.registry.pages import read_heading
from conveyor.registry.release import alias, promote
from tests.browser import chromium
from tests.conftest import POLICY_CODE, REPO, open_workspace
from tests.service import free_port

pytestmark = pytest.mark.slow
NAME = "loan-default"


def _request(root: Path) -> Any:
    return open_workspace(root, root / ".conveyor", actor="monitor-test")


def _log(root: Path, frame: pd.DataFrame, version: str = "1") -> None:
    """``frame``'s rows as answered requests in the project's inference log (as the service writes them)."""
    project = load_project(root / "conveyor.yaml", check_data=False)
    now = datetime.now(UTC)
    with InferenceLog(root / ".conveyor" / "inference" / NAME) as log:
        for i, row in enumerate(frame.to_dict("records")):
            features = {k: (None if pd.isna(row[k]) else row[k]) for k in project.features.all}
            log.record(
                LogEntry(
                    f"t{time.monotonic_ns()}-{i}",
                    now,
                    NAME,
                    version,
                    features,
                    0.3,
                    "champion",
                    0,
                    row[project.entity_key],
                    row[project.event_timestamp],
                )
            )


def _events(root: Path, kind: str) -> list:
    with Ledger(_request(root).ledger_url) as ledger:
        return [e for e in ledger.iter_events() if e.kind == kind]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_loans: Path) -> Path:
    """A project with a signed, registered, promoted champion (small data), copied for each test."""
    root = tmp_path_factory.mktemp("monitoring") / "project"
    (root / "data").mkdir(parents=True)
    shutil.copy(REPO / "conveyor.yaml", root / "conveyor.yaml")
    shutil.copytree(REPO / "policies", root / "policies", ignore=POLICY_CODE)
    shutil.copy(small_loans, root / "data" / "loans.csv")
    request = _request(root)
    version = run_training(request).version
    assert promote(request, f"{NAME}/{version}", "champion").decision.ok
    return root


@pytest.fixture
def project(trained: Path, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(trained, root)
    # Paths recorded in the stores point into the module's copy; the copy keeps them valid (same files).
    return root


@pytest.fixture(scope="module")
def traffic(demo_files: dict[str, Path]) -> dict[str, pd.DataFrame]:
    later = pd.read_csv(demo_files["v1"]).iloc[30_000:32_000]  # same months' distribution, rows not trained on
    drifted = pd.read_csv(demo_files["drift"]).head(2_000)
    return {"reference": later, "drifted": drifted}


def test_reference_like_traffic_shows_no_drift_and_drifted_traffic_does(trained: Path, traffic) -> None:
    root = trained
    _log(root, traffic["reference"])
    quiet = check_drift(_request(root), "2000", start=False).result
    assert quiet.status == "no_drift" and quiet.exit_code == 0 and quiet.window_rows == 2_000
    assert quiet.share < 0.3
    _log(root, traffic["drifted"])
    drifted = check_drift(_request(root), "2000", start=False).result
    assert drifted.status == "drift" and drifted.exit_code == 1 and drifted.share >= 0.3
    assert {"interest_rate", "credit_score", "purpose"} <= set(drifted.drifted)
    assert drifted.trigger and drifted.trigger.startswith("not started: asked not to retrain")
    # The record: report files hash to what the ledger says, linked to champion, reference and window.
    event = _events(root, "drift.checked")[-1]
    assert event.details["status"] == "drift"
    assert event.outputs[0] == drifted.report_digest
    from conveyor.registry.digests import file_digest

    assert file_digest(drifted.report) == drifted.report_digest and file_digest(drifted.html) == drifted.html_digest
    assert drifted.reference_digest in event.inputs and drifted.window_digest in event.inputs
    assert json.loads(drifted.report.read_text())["drifted"] == drifted.drifted
    page = drifted.html.read_text()  # Evidently's page opens with the verdict, drifted columns first
    heading = page[page.index('<section id="conveyor-verdict"') :][:20_000]
    title = f"Drift of loan-default version {drifted.version}: drift ({drifted.window})"
    assert f"<title>{title}</title>" in page and f">{title}</h1>" in heading
    assert "2,000 logged requests" in heading and "the training set of version 1" in heading
    assert "no retraining: asked not to retrain" in heading  # what it caused
    assert "p-value" in heading and "<th>score</th>" not in heading  # a p-value is called one
    listed = re.findall(r"<tr><td>([a-z_]+)</td><td>(drifted|no drift)</td>", heading)
    assert [c for c, _ in listed[: len(drifted.drifted)]] == sorted(drifted.drifted)
    assert all(v == "drifted" for _, v in listed[: len(drifted.drifted)]) and len(listed) == 14
    assert not _events(root, "retraining.triggered")
    # MLflow's UI: each check is a run beside the training, named, with its verdict and reports
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / '.conveyor' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(NAME)
    checks = client.search_runs([experiment.experiment_id], "tags.`conveyor.kind` = 'drift-check'")
    assert [r.data.tags["conveyor.verdict"] for r in checks] == ["drift", "no_drift"]  # newest first
    run = checks[0]
    assert run.info.run_name == f"drift check {NAME} v{drifted.version} ({drifted.window})"
    assert run.data.metrics["drift_share"] == pytest.approx(drifted.share)
    assert "interest_rate" in run.data.tags["conveyor.drifted"]
    assert "not started: asked not to retrain" in run.data.tags["mlflow.note.content"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    assert logged == {f"drift/{drifted.report.name}", f"drift/{drifted.html.name}"}
    _drawn_offline(drifted.html, root)


def _drawn_offline(page: Path, scratch: Path) -> None:
    """Headless Chromium, with no network to reach, draws Evidently's page and our heading."""
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", page.read_text())  # nothing to fetch
    dom = chromium(page, scratch)
    assert 'id="conveyor-verdict"' in dom
    assert dom.count("MuiTableCell") > 20 and "Drift Summary" in dom  # Evidently's app drew its tables


def test_a_window_too_small_is_reported_as_such(trained: Path) -> None:
    result = check_drift(_request(trained), "10", start=False).result
    assert result.status == "not_enough_data" and result.exit_code == 3 and result.window_rows == 10
    assert result.columns == [] and result.html is not None  # the page is the verdict alone
    heading = read_heading(result.html)
    assert heading is not None and heading.verdict.startswith("not enough data") and heading.status == "inconclusive"
    assert "Drift of loan-default version 1: not enough data (last 10 rows)" in result.html.read_text()


def test_drift_retrains_on_the_new_labels_once_and_the_cooldown_holds(project: Path, traffic) -> None:
    from mlflow import MlflowClient

    request = _request(project)
    _log(project, traffic["drifted"])
    labels = project / "data" / "labels.csv"
    traffic["drifted"].to_csv(labels, index=False)
    added = add_labels(request, labels, start=False)
    assert added.complete and added.matched == 2_000 and added.quality.status in ("ok", "breach")

    first = drift_flow(request, "2000")
    assert first.started is not None and first.retraining is not None, first.result.trigger
    assert first.retraining.status == "completed", first.retraining.reason
    new = first.retraining.version
    # The new model's training names the trigger, and the trigger names the drift report.
    trained_event = [e for e in _events(project, "model.trained") if e.details.get("cause")][-1]
    assert first.started.trigger in trained_event.inputs
    trigger_event = _events(project, "retraining.triggered")[-1]
    assert first.result.report_digest in trigger_event.inputs
    client = MlflowClient(tracking_uri=request.tracking_uri)
    assert alias(client, NAME, "champion") == "1"  # never straight to champion
    if first.retraining.canary:
        assert alias(client, NAME, "canary") == new
    derived = [e for e in _events(project, "dataset.versioned") if e.details.get("derived_from")]
    assert derived and added.digest in derived[-1].details["derived_from"]

    again = drift_flow(request, "2000")
    assert again.started is None and again.retraining is None
    assert "already started for this window" in again.result.trigger or "cooldown" in again.result.trigger
    assert len(_events(project, "retraining.triggered")) == 1


def test_a_failed_retraining_leaves_the_champion_serving(project: Path, traffic) -> None:
    from mlflow import MlflowClient

    request = _request(project)
    _log(project, traffic["drifted"])
    bad = traffic["drifted"].assign(purpose="crypto")  # a loan purpose the suite does not know, on every row
    labels = project / "data" / "bad-labels.csv"
    bad.to_csv(labels, index=False)
    add_labels(request, labels, start=False)
    outcome = drift_flow(request, "2000")
    assert outcome.retraining is not None and outcome.retraining.status == "failed"
    assert "expectation" in outcome.retraining.reason and "purpose" in outcome.retraining.reason
    client = MlflowClient(tracking_uri=request.tracking_uri)
    assert alias(client, NAME, "champion") == "1" and alias(client, NAME, "canary") is None
    failed = _events(project, "retraining.failed")
    assert len(failed) == 1 and outcome.started.trigger in failed[0].inputs


def test_the_cli_exit_codes_say_drift_no_drift_or_not_enough_data(trained: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PREFECT_"))}
    env["CONVEYOR_HOME"] = str(trained / ".conveyor")

    def check(window: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "conveyor",
                "--config",
                str(trained / "conveyor.yaml"),
                "drift",
                "check",
                "--window",
                window,
                "--no-retrain",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    small = check("5")
    assert small.returncode == 3, small.stderr
    assert json.loads(small.stdout)["status"] == "not_enough_data"
    bad = check("soon")
    assert bad.returncode == 2 and "neither a row count" in bad.stderr


def test_the_trigger_works_through_a_prefect_server(project: Path, traffic, tmp_path: Path) -> None:
    """``conveyor monitor`` serves the deployments; a drift check emits the event; the retraining runs there."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PREFECT_", "MLFLOW_"))}
    env.update(
        {
            "PREFECT_HOME": str(tmp_path / "prefect-server"),
            "DO_NOT_TRACK": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "CONVEYOR_HOME": str(project / ".conveyor"),
        }
    )
    processes: list[subprocess.Popen] = []

    def start(command: list[str], log: Path, extra: dict[str, str]) -> subprocess.Popen:
        with log.open("w") as output:  # the child keeps its own descriptor
            process = subprocess.Popen(
                command,
                env={**env, **extra},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=project,
            )
        processes.append(process)
        return process

    _log(project, traffic["drifted"])
    labels = project / "data" / "labels.csv"
    traffic["drifted"].to_csv(labels, index=False)
    add_labels(_request(project), labels, start=False)
    try:
        start(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            tmp_path / "server.log",
            {},
        )
        _wait(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120, "the Prefect server")
        conveyor = [sys.executable, "-m", "conveyor", "--config", str(project / "conveyor.yaml")]
        start([*conveyor, "monitor", "--interval", "3600"], tmp_path / "monitor.log", {"PREFECT_API_URL": api})
        _wait(lambda: _deployments(api) >= 2, 120, "the monitor's deployments")
        checked = subprocess.run(
            [*conveyor, "drift", "check", "--window", "2000"],
            env={**env, "PREFECT_API_URL": api},
            capture_output=True,
            text=True,
            timeout=300,
            cwd=project,
        )
        assert checked.returncode == 1, checked.stdout + checked.stderr
        assert "retraining requested from the Prefect server" in checked.stdout
        _wait(
            lambda: _events(project, "retraining.completed") or _events(project, "retraining.failed"),
            240,
            "the retraining",
        )
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, 2)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, 9)
                    process.wait(10)
    completed = _events(project, "retraining.completed")
    assert completed, (tmp_path / "monitor.log").read_text()[-3000:]
    trigger = _events(project, "retraining.triggered")[-1].outputs[0]
    assert trigger in completed[0].inputs


def _deployments(api: str) -> int:
    response = httpx.post(f"{api}/deployments/filter", json={}, timeout=5)
    return len(response.json()) if response.status_code == 200 else 0


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} did not come within {timeout} s")
