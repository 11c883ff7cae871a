"""Shared fixtures: a clean environment whose every store lives in ``tmp_path``."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
POLICY_CODE = shutil.ignore_patterns("*.py", "__pycache__")  # a project's policies folder holds only data
_PREFIXES = ("CONVEYOR_", "MLFLOW_", "PREFECT_", "BENTOML_", "FEAST_", "GX_")


@pytest.fixture(autouse=True)
def clean_environ(tmp_path: Path) -> Iterator[Path]:
    """No tool settings from outside; Conveyor's home in ``tmp_path``; all restored afterwards."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(_PREFIXES):
            del os.environ[name]
    os.environ["CONVEYOR_HOME"] = str(tmp_path / ".conveyor")
    try:
        yield tmp_path
    finally:
        os.environ.clear()
        os.environ.update(saved)
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
    from conveyor.demo.data import DEMO_DATASETS, generate, write_csv

    folder = tmp_path_factory.mktemp("demo-data")
    files = {}
    for name, spec in DEMO_DATASETS.items():
        files[name] = folder / Path(spec.path).name
        write_csv(generate(spec), files[name])
    return files


@pytest.fixture
def bare_project(tmp_path: Path) -> Path:
    """The demo's config and policies in ``tmp_path``, without data or stores."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "conveyor.yaml", root / "conveyor.yaml")
    shutil.copytree(REPO / "policies", root / "policies", ignore=POLICY_CODE)
    return root


@pytest.fixture
def demo_project(tmp_path: Path, demo_files: dict[str, Path]) -> Path:
    """A copy of the demo project (config, policies and data, no DVC) in ``tmp_path``."""
    from conveyor.demo.data import DEMO_DATASETS

    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "conveyor.yaml", root / "conveyor.yaml")
    shutil.copytree(REPO / "policies", root / "policies", ignore=POLICY_CODE)
    for name, spec in DEMO_DATASETS.items():
        (root / spec.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_files[name], root / spec.path)
    return root


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


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty database on the test PostgreSQL server (its URL), dropped afterwards; skips the
    test, saying why, where there is no server."""
    import uuid

    import sqlalchemy as sa

    admin_url = os.environ.get("TEST_POSTGRES_URL")
    if not admin_url:
        pytest.skip("PostgreSQL is not available here: `make test` starts one on 127.0.0.1 when it can")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield str(sa.make_url(admin_url).set(database=name))
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def open_workspace(
    root: Path, home: Path, *, ledger_url: str | None = None, tracking_uri: str | None = None, actor: str = "tester"
) -> Any:
    """The Workspace of the project at ``root`` with its stores in ``home`` (SQLite unless given)."""
    from conveyor.registry.workspace import Workspace

    return Workspace.open(
        root,
        home=str(home),
        ledger_url=ledger_url or f"sqlite:///{home / 'ledger.db'}",
        mlflow_tracking_uri=tracking_uri or f"sqlite:///{home / 'mlflow.db'}",
        actor=actor,
    )


def shorten_eval_sets(root: Path, **keep: int) -> None:
    """Keep the first ``keep[name]`` cases of each named evaluation set of the project at ``root``."""
    for name, count in keep.items():
        path = root / "llm" / "eval" / f"{name}.jsonl"
        path.write_text("\n".join(path.read_text().splitlines()[:count]) + "\n")


def copy_llm_project(root: Path) -> Path:
    """The repository's LLM project (assistant.yaml, prompts, evaluation sets, policies, lock) in
    ``root``; returns its project file."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("assistant.yaml", "assistant-fallback.yaml", "uv.lock"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "llm", root / "llm")
    shutil.copytree(REPO / "policies", root / "policies", ignore=POLICY_CODE)
    return root / "assistant.yaml"
