"""Settings: environment, then the project file, then defaults; bootstrap silences every tool."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor.bootstrap import TELEMETRY_OFF, bootstrap
from conveyor.settings import configure, get_settings
from policies.errors import ConfigInvalid


def test_defaults_put_every_store_under_home(tmp_path: Path) -> None:
    del os.environ["CONVEYOR_HOME"]
    project = tmp_path / "conveyor.yaml"
    settings = configure(project_file=project)
    assert settings.home == tmp_path / ".conveyor"
    assert settings.ledger_url == f"sqlite:///{tmp_path / '.conveyor' / 'ledger.db'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / '.conveyor' / 'mlflow.db'}"
    assert get_settings() is settings


def test_environment_beats_project_file_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "conveyor.yaml"
    project.write_text("settings:\n  actor: from-file\n  ledger_url: sqlite:///file.db\n")
    monkeypatch.setenv("CONVEYOR_PROJECT_FILE", str(project))
    monkeypatch.setenv("CONVEYOR_ACTOR", "from-env")
    settings = configure()
    assert settings.actor == "from-env"
    assert settings.ledger_url == "sqlite:///file.db"


def test_unknown_setting_in_project_file_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "conveyor.yaml"
    project.write_text("settings:\n  ledger_uri: sqlite:///x.db\n")
    with pytest.raises(ConfigInvalid, match="`ledger_uri`"):
        configure(project_file=project)


def test_settings_section_must_be_a_mapping(tmp_path: Path) -> None:
    project = tmp_path / "conveyor.yaml"
    project.write_text("settings: [a, b]\n")
    with pytest.raises(ConfigInvalid, match="must be a mapping"):
        configure(project_file=project)


def test_bootstrap_turns_telemetry_off_and_homes_into_conveyor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DO_NOT_TRACK", "false")
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "false")
    settings = bootstrap(configure(project_file=tmp_path / "conveyor.yaml"))
    for name, value in TELEMETRY_OFF.items():
        assert os.environ[name] == value
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["PREFECT_HOME"] == str(settings.home / "prefect")
    assert os.environ["BENTOML_HOME"] == str(settings.home / "bentoml")
    assert os.environ["MLFLOW_TRACKING_URI"] == settings.mlflow_tracking_uri
    assert settings.home.is_dir()


def test_importing_settings_and_bootstrap_has_no_side_effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import conveyor.bootstrap
    import conveyor.settings

    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # where a default .conveyor/ would appear
    environment = dict(os.environ)
    importlib.reload(conveyor.settings)
    importlib.reload(conveyor.bootstrap)
    assert list(workdir.iterdir()) == [] and not (tmp_path / ".conveyor").exists()
    assert dict(os.environ) == environment
    assert conveyor.settings._settings is None
