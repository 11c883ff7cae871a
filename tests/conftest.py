"""Shared fixtures: a clean environment whose every store lives in ``tmp_path``."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
POLICY_CODE = shutil.ignore_patterns("*.py", "__pycache__")  # a project's policies folder holds only data
_PREFIXES = ("CONVEYOR_", "MLFLOW_", "PREFECT_", "BENTOML_", "FEAST_", "GX_")


@pytest.fixture(autouse=True)
def clean_environ(tmp_path: Path) -> Iterator[Path]:
    """No tool settings from outside; Conveyor's home in ``tmp_path``; all restored afterwards."""
    import conveyor.settings

    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(_PREFIXES):
            del os.environ[name]
    os.environ["CONVEYOR_HOME"] = str(tmp_path / ".conveyor")
    conveyor.settings._settings = None
    try:
        yield tmp_path
    finally:
        os.environ.clear()
        os.environ.update(saved)
        conveyor.settings._settings = None
        if "mlflow" in sys.modules:  # a test's registry must not leak into the next test
            sys.modules["mlflow"].set_tracking_uri(f"sqlite:///{tmp_path / 'stray-mlflow.db'}")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect server for every flow run of the session (started once, stopped after)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's data files, generated once per test session."""
    from pipelines.demo_data import DEMO_DATASETS, generate, write_csv

    folder = tmp_path_factory.mktemp("demo-data")
    files = {}
    for name, spec in DEMO_DATASETS.items():
        files[name] = folder / Path(spec.path).name
        write_csv(generate(spec), files[name])
    return files


@pytest.fixture
def demo_project(tmp_path: Path, demo_files: dict[str, Path]) -> Path:
    """A copy of the demo project (config, policies and data, no DVC) in ``tmp_path``."""
    from pipelines.demo_data import DEMO_DATASETS

    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "conveyor.yaml", root / "conveyor.yaml")
    shutil.copytree(REPO / "policies", root / "policies", ignore=POLICY_CODE)
    for name, spec in DEMO_DATASETS.items():
        (root / spec.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_files[name], root / spec.path)
    return root
