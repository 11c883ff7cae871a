"""The demo's config and a few thousand of its rows, for the stage tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.demo.data import DEMO_DATASETS, generate, write_csv
from conveyor.policies.project import ProjectConfig, load_project
from tests.conftest import REPO


@pytest.fixture(scope="module")
def config() -> ProjectConfig:
    return load_project(REPO / "conveyor.yaml", check_data=False)


@pytest.fixture(scope="module")
def loans(tmp_path_factory: pytest.TempPathFactory, config: ProjectConfig) -> Path:
    path = tmp_path_factory.mktemp("stages") / "loans.csv"
    write_csv(generate(DEMO_DATASETS["v1"]).head(3_000), path)
    return path
