"""`dvc repro` runs the same pipeline as the CLI and reproduces the model's metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.training import run_training
from tests.conftest import REPO, open_workspace

pytestmark = pytest.mark.slow


def test_dvc_repro_reproduces_the_model(project: Path, tmp_path: Path) -> None:
    """The tabular stages (the LLM release stage has its own project files, not copied here)."""
    for name in ("dvc.yaml", "params.yaml", "uv.lock"):
        shutil.copy(REPO / name, project / name)
    for name in (".venv", "pipelines", "registry"):
        (project / name).symlink_to(REPO / name)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
    home = tmp_path / "dvc-home"
    env = {**os.environ, "CONVEYOR_HOME": str(home), "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "train"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((project / "build" / "validation.json").read_text())["success"] is True
    reproduced = json.loads((project / "build" / "metrics.json").read_text())

    direct = run_training(open_workspace(project, tmp_path / "direct"))
    assert reproduced == pytest.approx(direct.metrics, abs=1e-6)
    assert "Registered loan-default version 1" in done.stdout

    again = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "train"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "up to date" in again.stdout.lower(), again.stdout
