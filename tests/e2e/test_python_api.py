"""The Python API as a notebook uses it: `examples/notebook.py` trains, promotes and audits a project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.policies.errors import ConveyorError
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_the_notebook_trains_promotes_and_audits_with_the_workspace_alone(project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "MLFLOW_", "PREFECT_"))}
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "notebook.py"), str(project)],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trained: loan-default version 1" in done.stdout
    assert "promoted: True" in done.stdout and "no champion yet: nothing to beat" in done.stdout
    assert "audited: every link verified" in done.stdout and "FAIL" not in done.stdout
    assert (project / ".conveyor" / "ledger.db").is_file()  # the project's own stores, found from its folder


def test_the_api_returns_what_the_cli_prints_as_json(project: Path) -> None:
    from typer.testing import CliRunner

    import conveyor
    from conveyor.cli import app

    os.environ["CONVEYOR_HOME"] = str(project / ".conveyor")
    ws = conveyor.Workspace.open(project)
    trained = ws.train()
    ref = f"{trained.name}/{trained.version}"
    printed = CliRunner().invoke(app, ["--config", str(project / "conveyor.yaml"), "verify", ref, "--json"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == ws.verify(ref).to_dict()
    dry = ws.promote(ref, to="champion", dry_run=True)
    assert dry.decision.ok and dry.dry_run and ws.stores.champion() is None  # a dry run changes nothing
    with pytest.raises(ConveyorError, match="canary or champion"):
        ws.promote(ref, to="production")
