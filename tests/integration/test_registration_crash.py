"""A training killed (SIGKILL) at each point of its registration leaves nothing half-trusted: the
next command that touches the model marks the version, `status` and `verify` say so, `promote`
refuses it; no build leaves its staging folder behind; two builds at once both register."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger

pytestmark = pytest.mark.slow
runner = CliRunner()
NAME = "loan-default"

# Run `conveyor train` in a process that kills itself (SIGKILL: no cleanup runs) right after the
# MLflow client's ``METHOD`` returns, the first time registration calls it.
KILLER = """
import os, signal, sys
from mlflow import MlflowClient

method = sys.argv[1]
original = getattr(MlflowClient, method)

def then_die(self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    if method != "set_model_version_tag" or args[2] == "conveyor.version_digest":
        os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(MlflowClient, method, then_die)
from conveyor.cli import app
sys.argv = ["conveyor", "--config", sys.argv[2], "train"]
app()
"""


def conveyor(project: Path, *args: str):
    return runner.invoke(app, ["--config", str(project / "conveyor.yaml"), *args])


def registered_events(home: Path) -> list[str]:
    with Ledger(f"sqlite:///{home / 'ledger.db'}") as ledger:
        return [str(e.details["version"]) for e in ledger.iter_events() if e.kind == EventKind.MODEL_REGISTERED]


@pytest.mark.parametrize("point", ["create_model_version", "set_model_version_tag", "set_registered_model_alias"])
def test_a_training_killed_mid_registration_is_marked_never_promoted(project: Path, tmp_path: Path, point: str) -> None:
    home = tmp_path / ".conveyor"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "MLFLOW_", "PREFECT_"))}
    env["CONVEYOR_HOME"] = str(home)
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, point, str(project / "conveyor.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert registered_events(home) == []  # the ledger never heard of it
    assert [p.name for p in (home / "staging").iterdir()] != [], "the killed build's staging folder is there"

    status = conveyor(project, "status", "--json")
    assert status.exit_code == 0, status.output
    version = json.loads(status.stdout)["versions"][0]
    assert version["version"] == "1" and "registration did not finish" in version["unfinished"]
    assert version["aliases"] == []  # @candidate no longer points at it
    shown = conveyor(project, "status")
    assert "1 (UNFINISHED registration)" in shown.stdout

    verified = conveyor(project, "verify", f"{NAME}/1", "--json")
    assert verified.exit_code == 1
    ledger_link = next(link for link in json.loads(verified.stdout)["links"] if link["name"] == "ledger")
    assert not ledger_link["ok"] and "its registration did not finish" in ledger_link["detail"]
    promoted = conveyor(project, "promote", f"{NAME}/1", "--to", "champion", "--json")
    assert promoted.exit_code == 1 and json.loads(promoted.stdout)["ok"] is False

    trained = conveyor(project, "train", "--json")  # the next build works, and removes the dead one's folder
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["version"] == "2" and registered_events(home) == ["2"]
    assert list((home / "staging").iterdir()) == [], "a staging folder was left behind"


def test_two_trainings_at_once_both_register_and_leave_no_staging_folder(project: Path, tmp_path: Path) -> None:
    home = tmp_path / ".conveyor"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "MLFLOW_", "PREFECT_"))}
    env["CONVEYOR_HOME"] = str(home)
    command = [sys.executable, "-m", "conveyor", "--config", str(project / "conveyor.yaml"), "train", "--json"]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outputs = [run.communicate(timeout=400) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [o[1][-2000:] for o in outputs]
    versions = sorted(json.loads(out)["version"] for out, _ in outputs)
    assert versions == ["1", "2"] and sorted(registered_events(home)) == versions
    status = json.loads(conveyor(project, "status", "--json").stdout)
    assert not any(v.get("unfinished") for v in status["versions"])
    assert list((home / "staging").iterdir()) == []
