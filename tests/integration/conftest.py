"""Integration fixtures: a real Prefect API for the session, small projects on real stores."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import POLICY_CODE, REPO

SMALL_ROWS = 8_000


@pytest.fixture(scope="session")
def small_loans(demo_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 8,000 demo rows: enough to train and judge a model in seconds."""
    path = tmp_path_factory.mktemp("small") / "loans.csv"
    with demo_files["v1"].open() as source, path.open("w") as target:
        for i, line in enumerate(source):
            if i > SMALL_ROWS:
                break
            target.write(line)
    return path


@pytest.fixture
def project(tmp_path: Path, small_loans: Path) -> Path:
    """The demo project (config, policies) on the small data, with its stores in tmp_path."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    shutil.copy(REPO / "conveyor.yaml", root / "conveyor.yaml")
    shutil.copytree(REPO / "policies", root / "policies", ignore=POLICY_CODE)
    shutil.copy(small_loans, root / "data" / "loans.csv")
    return root
