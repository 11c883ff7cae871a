"""The Workspace: settings looked up in one order, policies parsed once per content, one plain form."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor.policies.errors import ConfigInvalid, PolicyInvalid
from conveyor.registry.digests import file_digest
from conveyor.registry.workspace import TELEMETRY_OFF, Workspace


def test_defaults_put_every_store_under_home(tmp_path: Path) -> None:
    del os.environ["CONVEYOR_HOME"]
    ws = Workspace.open(tmp_path / "conveyor.yaml")
    assert ws.home == tmp_path / ".conveyor"
    assert ws.ledger_url == f"sqlite:///{tmp_path / '.conveyor' / 'ledger.db'}"
    assert ws.tracking_uri == f"sqlite:///{tmp_path / '.conveyor' / 'mlflow.db'}"
    assert Workspace.open(tmp_path).project_file == ws.project_file  # a folder means its conveyor.yaml


def test_environment_beats_project_file_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "conveyor.yaml"
    project.write_text("settings:\n  actor: from-file\n  ledger_url: sqlite:///file.db\n")
    monkeypatch.setenv("CONVEYOR_PROJECT_FILE", str(project))
    monkeypatch.setenv("CONVEYOR_ACTOR", "from-env")
    ws = Workspace.open()
    assert ws.actor == "from-env"
    assert ws.ledger_url == "sqlite:///file.db"


def test_unknown_setting_in_project_file_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "conveyor.yaml"
    project.write_text("settings:\n  ledger_uri: sqlite:///x.db\n")
    with pytest.raises(ConfigInvalid, match="`ledger_uri`"):
        Workspace.open(project)


def test_settings_section_must_be_a_mapping(tmp_path: Path) -> None:
    project = tmp_path / "conveyor.yaml"
    project.write_text("settings: [a, b]\n")
    with pytest.raises(ConfigInvalid, match="must be a mapping"):
        Workspace.open(project)


def test_prepare_turns_telemetry_off_and_homes_into_conveyor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DO_NOT_TRACK", "false")
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "false")
    ws = Workspace.open(tmp_path / "conveyor.yaml").prepare()
    for name, value in TELEMETRY_OFF.items():
        assert os.environ[name] == value
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["PREFECT_HOME"] == str(ws.home / "prefect")
    assert os.environ["BENTOML_HOME"] == str(ws.home / "bentoml")
    assert os.environ["MLFLOW_TRACKING_URI"] == ws.tracking_uri
    assert ws.home.is_dir()


def test_importing_the_workspace_has_no_side_effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from conveyor.registry import settings, workspace

    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # where a default .conveyor/ would appear
    environment = dict(os.environ)
    importlib.reload(settings)
    importlib.reload(workspace)
    Workspace.open(workdir)  # opening reads; only prepare() writes
    assert list(workdir.iterdir()) == [] and not (tmp_path / ".conveyor").exists()
    assert dict(os.environ) == environment


def test_the_plain_form_rebuilds_the_same_workspace_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace.open(tmp_path, ledger_url="postgresql+psycopg://u@127.0.0.1/l", actor="ci", flows="direct")
    params = ws.params()
    assert all(isinstance(v, str) for v in params.values())
    monkeypatch.setenv("CONVEYOR_ACTOR", "someone-else")  # the parameters win over the worker's environment
    again = Workspace.from_params(params)
    assert again.params() == params
    env = ws.environment()
    assert env["CONVEYOR_LEDGER_URL"] == ws.ledger_url and env["CONVEYOR_PROJECT_FILE"] == str(ws.project_file)
    monkeypatch.delenv("CONVEYOR_ACTOR")
    for name, value in env.items():
        if name.startswith("CONVEYOR_"):
            monkeypatch.setenv(name, value)
    assert Workspace.open().params() == params  # the service opens this same Workspace from its environment


def test_relative_flow_parameters_are_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ws = Workspace.from_params(
        {"project_file": "p/conveyor.yaml", "home": "p/.conveyor", "ledger_url": "sqlite:///p/l.db"}
    )
    assert ws.project_file == tmp_path / "p" / "conveyor.yaml" and ws.home == tmp_path / "p" / ".conveyor"
    assert ws.ledger_url == f"sqlite:///{tmp_path / 'p' / 'l.db'}"


@pytest.mark.parametrize(
    ("settings", "prefect"),
    [
        ({}, False),
        ({"prefect_api_url": "http://127.0.0.1:4200/api"}, True),
        ({"flows": "prefect"}, True),
        ({"flows": "direct", "prefect_api_url": "http://127.0.0.1:4200/api"}, False),
    ],
)
def test_flows_run_on_prefect_only_with_a_server_or_when_asked(tmp_path: Path, settings: dict, prefect: bool) -> None:
    assert Workspace.open(tmp_path, **settings).uses_prefect is prefect


def test_prefects_own_variable_names_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    ws = Workspace.open(tmp_path)
    assert ws.prefect_api_url == "http://127.0.0.1:4200/api" and ws.uses_prefect


@pytest.fixture
def project(bare_project: Path) -> Path:
    return bare_project


def test_a_policy_is_parsed_once_with_its_digest_and_again_when_it_changes(project: Path) -> None:
    ws = Workspace.open(project)
    first = ws.policy("promotion")
    assert first.digest == file_digest(project / "policies" / "promotion.yaml")
    assert ws.policy("promotion") is first  # unchanged file: the same parsed object
    path = project / "policies" / "promotion.yaml"
    path.write_text(path.read_text().replace("max_model_size_mb: 50", "max_model_size_mb: 40"))
    second = ws.policy("promotion")
    assert second is not first and second.digest == file_digest(path)
    assert second.value.max_model_size_mb == 40


def test_a_broken_policy_is_an_error_never_a_default(project: Path) -> None:
    (project / "policies" / "canary.yaml").write_text("steps: [10, 50]\nmax_error_rate: lots\n")
    with pytest.raises(PolicyInvalid, match="max_error_rate"):
        Workspace.open(project).canary_policy()
    (project / "policies" / "canary.yaml").unlink()
    with pytest.raises(PolicyInvalid, match="No file at"):
        Workspace.open(project).canary_policy()
    with pytest.raises(ConfigInvalid, match="no policy called 'promotions'"):
        Workspace.open(project).policy("promotions")


def test_without_a_signing_policy_the_project_key_signs(project: Path) -> None:
    (project / "policies" / "signing.yaml").unlink()
    loaded = Workspace.open(project).policy("signing")
    assert loaded.digest is None and loaded.value.sign_with == "key"


def test_the_project_is_read_again_when_its_file_changes(project: Path) -> None:
    ws = Workspace.open(project)
    assert ws.model_name == "loan-default"
    config = project / "conveyor.yaml"
    config.write_text(config.read_text().replace("model_name: loan-default", "model_name: loan-default-b"))
    assert ws.model_name == "loan-default-b"


def test_no_champion_is_none_not_an_error(project: Path) -> None:
    ws = Workspace.open(project, home=str(project / ".conveyor"))
    assert ws.champion() is None and ws.alias("candidate", "nobody") is None


def test_a_second_project_opened_in_the_same_process_keeps_its_own_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CONVEYOR_LEDGER_URL", "CONVEYOR_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    saved = {k: v for k, v in os.environ.items() if k.startswith(("CONVEYOR_", "MLFLOW_"))}
    try:
        first = Workspace.open(tmp_path / "a" / "conveyor.yaml", home=str(tmp_path / "a" / ".conveyor")).prepare()
        second = Workspace.open(tmp_path / "b" / "conveyor.yaml", home=str(tmp_path / "b" / ".conveyor"))
        assert second.ledger_url == f"sqlite:///{tmp_path / 'b' / '.conveyor' / 'ledger.db'}" != first.ledger_url
        assert second.tracking_uri == f"sqlite:///{tmp_path / 'b' / '.conveyor' / 'mlflow.db'}"
        assert Workspace.open().ledger_url == first.ledger_url  # the prepared one's children still open it
        monkeypatch.setenv("CONVEYOR_LEDGER_URL", "sqlite:///chosen.db")  # one the user set is always read
        assert (
            Workspace.open(tmp_path / "b", home=str(tmp_path / "b" / ".conveyor")).ledger_url == "sqlite:///chosen.db"
        )
    finally:
        for name in [k for k in os.environ if k.startswith(("CONVEYOR_", "MLFLOW_"))]:
            del os.environ[name]
        os.environ.update(saved)
