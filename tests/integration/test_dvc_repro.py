"""`dvc repro` runs the same pipeline as the CLI and reproduces the model's metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.pipelines.training import run_training
from tests.conftest import REPO, open_workspace

pytestmark = pytest.mark.slow


def test_dvc_repro_reproduces_the_model(project: Path, tmp_path: Path) -> None:
    """The tabular stages (the LLM release stage has its own project files, not copied here)."""
    for name in ("dvc.yaml", "params.yaml", "uv.lock"):
        shutil.copy(REPO / name, project / name)
    for name in (".venv", "src"):
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


def test_the_repository_s_dvc_remote_takes_the_data_and_a_fresh_clone_pulls_it(
    demo_files: dict[str, Path], tmp_path: Path
) -> None:
    """The default remote (a local folder, .conveyor/dvc-remote) as .dvc/config gives it: `dvc push`
    from one checkout, `dvc pull` into another, the same bytes as the committed .dvc record says."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def dvc(where: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=where, env=env, capture_output=True, text=True)

    first, clone = tmp_path / "first", tmp_path / "clone"
    for checkout in (first, clone):
        (checkout / "data").mkdir(parents=True)
        assert dvc(checkout, "init", "--no-scm", "-q").returncode == 0
        ours = (REPO / ".dvc" / "config").read_text().replace("[core]\n", "[core]\n    no_scm = True\n", 1)
        (checkout / ".dvc" / "config").write_text(ours)  # the repository's, without git here
    shutil.copy(demo_files["v1"], first / "data" / "loans.csv")
    assert dvc(first, "add", "data/loans.csv").returncode == 0
    recorded = (first / "data" / "loans.csv.dvc").read_text()
    assert recorded == (REPO / "data" / "loans.csv.dvc").read_text()  # the demo's data is the committed version
    pushed = dvc(first, "push")
    assert pushed.returncode == 0 and "1 file pushed" in pushed.stdout, pushed.stdout + pushed.stderr
    assert any((first / ".conveyor" / "dvc-remote").rglob("*"))
    shutil.copy(first / "data" / "loans.csv.dvc", clone / "data" / "loans.csv.dvc")
    remote = str(first / ".conveyor" / "dvc-remote")
    assert dvc(clone, "remote", "modify", "--local", "local", "url", remote).returncode == 0  # the shared place
    pulled = dvc(clone, "pull")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (clone / "data" / "loans.csv").read_bytes() == demo_files["v1"].read_bytes()
