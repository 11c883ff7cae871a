"""The command line as a user types it (Typer's runner), and the front door's speed budget."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.registry.digests import file_digest
from conveyor.registry.dvc_files import dvc_recorded_md5
from tests.conftest import REPO

runner = CliRunner()


def conveyor(project: Path | None, *args: str):
    prefix = ["--config", str(project / "conveyor.yaml")] if project else []
    return runner.invoke(app, [*prefix, *args])


def test_help_lists_the_commands() -> None:
    result = conveyor(None, "--help")
    assert result.exit_code == 0
    for command in ("demo", "lineage", "audit", "version", "config"):
        assert command in result.stdout


def test_version_prints_the_installed_package_s_version() -> None:
    from importlib.metadata import version

    result = conveyor(None, "--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"conveyor {version('conveyor')}"


def test_shell_completion_is_offered_and_completes_the_commands() -> None:
    script = Path(sys.executable).parent / "conveyor"
    # the shell named, not detected from the process tree (which has no shell under a detached CI job)
    named = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    shown = subprocess.run([script, "--show-completion", "bash"], capture_output=True, text=True, env=named)
    assert shown.returncode == 0, shown.stderr
    assert "complete " in shown.stdout and "_CONVEYOR_COMPLETE=complete_bash" in shown.stdout
    env = {
        "PATH": str(script.parent),
        "_CONVEYOR_COMPLETE": "complete_bash",
        "COMP_WORDS": "conveyor lin",
        "COMP_CWORD": "1",
    }
    completed = subprocess.run([script], capture_output=True, text=True, env=env, check=False)
    assert completed.stdout.split() == ["lineage"]


def test_a_command_outside_a_project_says_so_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CONVEYOR_HOME", "CONVEYOR_PROJECT_FILE", "CONVEYOR_LEDGER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    for command in (["audit", "--ledger"], ["status"], ["train"]):
        result = conveyor(None, *command)
        assert result.exit_code == 2 and "No Conveyor project here" in result.stderr, command
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "record").mkdir()
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "record"))  # an auditor holding only a home
    assert conveyor(None, "audit", "--ledger").exit_code == 0


def test_a_drift_check_with_no_champion_has_nothing_to_act_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.copy(REPO / "conveyor.yaml", tmp_path / "conveyor.yaml")
    shutil.copytree(REPO / "policies", tmp_path / "policies", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "MLFLOW_"))}
    script = Path(sys.executable).parent / "conveyor"
    result = subprocess.run([script, "drift", "check"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 3, result.stderr  # not 1: that is "drift found"
    assert "has no champion" in result.stderr and "conveyor promote" in result.stderr
    assert "INFO" not in result.stderr  # no library's start-up chatter


def test_canary_status_without_an_admin_key_reads_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.copy(REPO / "conveyor.yaml", tmp_path / "conveyor.yaml")
    for name in ("CONVEYOR_HOME", "CONVEYOR_ADMIN_KEY", "CONVEYOR_LEDGER_URL", "CONVEYOR_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    result = conveyor(tmp_path, "canary", "status")
    assert result.exit_code == 0, result.output
    assert "No admin key given" in result.stdout and "the ledger's last canary events for loan-default" in result.stdout


def test_a_key_command_whose_redis_does_not_answer_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from conveyor.serving.auth import ApiKeys

    shutil.copy(REPO / "conveyor.yaml", tmp_path / "conveyor.yaml")
    for name in ("CONVEYOR_LEDGER_URL", "CONVEYOR_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / ".conveyor"))
    keys = tmp_path / ".conveyor" / "serving" / "api-keys.json"
    ApiKeys(keys).create("app")
    before = keys.read_bytes()
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    for args in (["create", "eve"], ["revoke", "app"], ["list"]):
        result = conveyor(tmp_path, "api-key", *args)
        assert result.exit_code == 2, result.output
        assert "which keeps the API keys, does not answer" in result.output and "Nothing was changed" in result.output
        assert "Traceback" not in result.output
    assert keys.read_bytes() == before


def test_help_imports_no_heavy_library() -> None:
    probe = (
        "import sys\n"
        "from conveyor.cli import main\n"
        "sys.argv = ['conveyor', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ['pandas', 'numpy', 'sqlalchemy', 'pydantic', 'mlflow', 'prefect', 'dvc', 'feast',\n"
        "         'great_expectations', 'bentoml', 'evidently', 'sklearn', 'model_signing', 'yaml']\n"
        "print('LOADED', [m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out


def test_help_lists_the_exit_codes_at_the_root_and_in_every_group() -> None:
    for args in ([], ["canary"], ["drift"], ["llm"]):
        shown = " ".join(conveyor(None, *args, "--help").stdout.split())
        assert "Exit codes, the same for every command: 0 done; 1 refused or found" in shown, args
        assert "2 a usage or set-up mistake" in shown and "3 not enough data, or nothing to act on" in shown


def _commands() -> dict[str, set[str]]:
    """Every command's path (``canary status``) and its options, as Click sees them."""
    import typer.main

    root = typer.main.get_command(app)
    found: dict[str, set[str]] = {}

    def walk(command, path: list[str], ctx) -> None:
        if not hasattr(command, "list_commands"):
            found[" ".join(path)] = {o for p in command.params for o in getattr(p, "opts", [])}
            return
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            walk(sub, [*path, name], root.context_class(sub, parent=ctx))

    walk(root, [], root.context_class(root))
    return found


def test_every_command_a_pipeline_calls_speaks_json() -> None:
    commands = _commands()
    assert {"train", "promote", "rollback", "status", "api-key list", "canary set-weight"} <= set(commands)
    without = {path for path, options in commands.items() if "--json" not in options}
    assert without == {"serve", "monitor", "demo"}, "long-running processes alone print no JSON"


def test_version_in_json_names_the_platform_libraries() -> None:
    from importlib.metadata import version

    result = conveyor(None, "version", "--json")
    found = json.loads(result.stdout)
    assert found["conveyor"] == version("conveyor") and found["libraries"]["prefect"].startswith("3.8")


def test_version_names_the_platform_libraries() -> None:
    result = conveyor(None, "version")
    assert result.exit_code == 0
    assert result.stdout.startswith("conveyor ")
    assert "prefect 3.8" in result.stdout and "mlflow 3." in result.stdout


@pytest.mark.slow
def test_demo_builds_the_data_trains_and_promotes(prefect_api: None, demo_project: Path) -> None:
    data = demo_project / "data" / "loans.csv"
    data.unlink()  # the demo rebuilds a missing file
    result = conveyor(demo_project, "demo", "--no-loop")  # the loop is `make demo`'s, and test_monitoring's
    assert result.exit_code == 0, result.output
    assert "data/loans.csv: generated" in result.stdout and "recorded as event #1" in result.stdout
    assert file_digest(data) in result.stdout
    assert "Registered loan-default version 1 as @candidate" in result.stdout
    assert "loan-default version 1 to champion: promoted" in result.stdout
    assert "no champion yet: nothing to beat" in result.stdout

    again = conveyor(demo_project, "demo", "--no-loop")  # a second run works too
    assert again.exit_code == 0, again.output
    assert "already recorded as event #1" in again.stdout
    assert "Registered loan-default version 2 as @candidate" in again.stdout
    assert "loan-default version 2 to champion: promoted (previous champion: version 1)" in again.stdout


def test_demo_data_then_lineage_and_audit_see_it(demo_project: Path) -> None:
    data = demo_project / "data" / "loans.csv"
    result = conveyor(demo_project, "demo", "--data-only")
    assert result.exit_code == 0, result.output
    assert "Registered" not in result.stdout

    shown = conveyor(demo_project, "lineage", str(data))
    assert shown.exit_code == 0, shown.output
    assert "#1 dataset.versioned" in shown.stdout and "path=data/loans.csv" in shown.stdout

    as_json = json.loads(conveyor(demo_project, "lineage", file_digest(data), "--up", "--json").stdout)
    assert [e["kind"] for e in as_json["upstream"]["events"]] == ["dataset.versioned"]

    audit = conveyor(demo_project, "audit", "--ledger")
    assert audit.exit_code == 0 and "Ledger intact: 2 events" in audit.stdout
    assert "No seal yet" in audit.stdout
    assert not (demo_project.parent / ".conveyor" / "keys").exists(), "an audit made a signing key"


def test_demo_under_dvc_reproduces_the_recorded_version(demo_project: Path) -> None:
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=demo_project, check=True)
    for path in demo_project.glob("data/*.csv"):
        path.unlink()
    result = conveyor(demo_project, "demo", "--data-only")
    assert result.exit_code == 0, result.output
    for name in ("loans.csv", "loans_drift.csv"):
        assert dvc_recorded_md5(demo_project / "data" / name) == dvc_recorded_md5(REPO / "data" / name)


def test_demo_refuses_data_that_differs_from_the_dvc_record(demo_project: Path) -> None:
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=demo_project, check=True)
    assert conveyor(demo_project, "demo", "--data-only").exit_code == 0
    data = demo_project / "data" / "loans.csv"
    data.write_bytes(data.read_bytes().replace(b",0\n", b",1\n", 5))
    result = conveyor(demo_project, "demo", "--data-only")
    assert result.exit_code == 1
    assert "has changed since DVC recorded it" in result.stderr and "dvc checkout" in result.stderr
    assert "Traceback" not in result.output


def test_audit_names_the_broken_link(demo_project: Path, tmp_path: Path) -> None:
    assert conveyor(demo_project, "demo", "--data-only").exit_code == 0
    with sqlite3.connect(tmp_path / ".conveyor" / "ledger.db") as conn:
        conn.execute("UPDATE ledger_events SET actor = 'mallory' WHERE seq = 1")
    result = conveyor(demo_project, "audit", "--ledger")
    assert result.exit_code == 1
    assert "broken at event #1" in result.stderr and "no longer matches its hash" in result.stderr
    as_json = json.loads(conveyor(demo_project, "audit", "--ledger", "--json").stdout)
    assert as_json["ok"] is False and as_json["broken_at"] == 1


def test_a_sealed_tail_deleted_fails_the_audit_even_with_the_head_rewritten(demo_project: Path, tmp_path: Path) -> None:
    assert conveyor(demo_project, "demo", "--data-only").exit_code == 0
    sealed = conveyor(demo_project, "audit", "--ledger", "--seal")
    assert sealed.exit_code == 0 and "Sealed at event #2" in sealed.stdout, sealed.output
    copy = tmp_path / "elsewhere" / "seal-2.json"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / ".conveyor" / "seals" / "seal-2.json").read_bytes())
    held = conveyor(demo_project, "audit", "--ledger", "--against", str(copy))
    assert held.exit_code == 0 and "the newest seals event #2" in held.stdout, held.output
    with sqlite3.connect(tmp_path / ".conveyor" / "ledger.db") as conn:  # the newest record goes, without a trace
        hash_1 = conn.execute("SELECT hash FROM ledger_events WHERE seq = 1").fetchone()[0]
        conn.execute("DELETE FROM ledger_links WHERE seq = 2")
        conn.execute("DELETE FROM ledger_events WHERE seq = 2")
        conn.execute("UPDATE ledger_head SET seq = 1, hash = ?", (hash_1,))
    result = conveyor(demo_project, "audit", "--ledger")
    assert result.exit_code == 1, result.output
    assert "names event(s) #2, which the ledger no longer holds: deleted" in result.stderr
    with sqlite3.connect(tmp_path / ".conveyor" / "ledger.db") as conn:  # and the seal rows too
        conn.execute("DELETE FROM ledger_seals")
    assert conveyor(demo_project, "audit", "--ledger").exit_code == 0  # nothing inside the database can tell
    outside = conveyor(demo_project, "audit", "--ledger", "--against", str(copy), "--json")
    assert outside.exit_code == 1 and "given with --against" in json.loads(outside.stdout)["reason"]


def test_lineage_of_unknown_things_says_so(demo_project: Path) -> None:
    stranger = demo_project / "stranger.txt"
    stranger.write_text("never recorded")
    result = conveyor(demo_project, "lineage", str(stranger))
    assert result.exit_code == 1 and "has no event that names" in result.stderr
    garbage = conveyor(demo_project, "lineage", "no/such/file.csv")
    assert (
        garbage.exit_code == 1
        and "is neither a file here nor anything else the ledger can be asked about" in garbage.stderr
    )


def test_config_check_reports_a_bad_config_in_one_paragraph(demo_project: Path) -> None:
    config = demo_project / "conveyor.yaml"
    config.write_text(config.read_text().replace("target: defaulted", "target: default"))
    result = conveyor(demo_project, "config", "check")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ")
    assert "'default' (did you mean 'defaulted'?)" in result.stderr
    assert result.stderr.strip().count("\n") == 0  # one paragraph
    assert "Traceback" not in result.output


def test_config_check_summarises_a_good_config(demo_project: Path) -> None:
    result = conveyor(demo_project, "config", "check")
    assert result.exit_code == 0, result.output
    assert "loan-default (classification)" in result.stdout
    assert "10 numeric, 4 categorical" in result.stdout


@pytest.mark.parametrize("args", [["audit"], ["lineage", "sha256:" + "0" * 64]])
def test_usage_mistakes_are_errors_not_tracebacks(demo_project: Path, args: list[str]) -> None:
    result = conveyor(demo_project, *args)
    assert result.exit_code != 0
    assert result.stderr.startswith("Error: ")


def test_make_bento_packs_the_installed_package_and_the_locked_requirements(tmp_path: Path) -> None:
    """`make bento` (scripts/bento.sh): the Bento carries the package's wheel, and every layer
    imports from that wheel; its requirements are uv.lock's pins (not a hand-kept list)."""
    import tomllib
    import zipfile

    env = os.environ | {"BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    env |= {"CONVEYOR_VENV_BIN": str(Path(sys.executable).parent), "CONVEYOR_BENTO_CONTEXT": str(tmp_path / "ctx")}
    built = subprocess.run(
        ["bash", str(REPO / "scripts" / "bento.sh"), "--output", "tag"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (bento,) = (tmp_path / "bentoml" / "bentos" / "conveyor").glob("*/bento.yaml")
    assert "service: conveyor.serving.service:Conveyor" in bento.read_text()
    (wheel,) = (bento.parent / "src" / "wheels").glob("conveyor-*.whl")
    assert not list((bento.parent / "src").glob("**/*.py")), "the code comes from the wheel, not loose copies"
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    layers = ("api", "cli", "demo.run", "pipelines.deployments", "pipelines.llm.flow", "serving.gateway")
    layers += ("serving.tabular", "monitoring.drift", "registry.ledger", "policies.project")
    code = f"import importlib\nfor m in {layers!r}:\n    print(importlib.import_module('conveyor.' + m).__file__)"
    found = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert found.returncode == 0, found.stderr
    files = found.stdout.split()
    assert len(files) == len(layers) and all(f.startswith(str(site / "conveyor")) for f in files), files
    assert (site / "conveyor" / "policies" / "defaults" / "serving.yaml").is_file()

    lock = {p["name"]: p["version"] for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]}
    wanted = (bento.parent / "env" / "python" / "requirements.txt").read_text().splitlines()
    pins = dict(line.split(";")[0].split("==") for line in wanted if "==" in line)
    for name in ("sqlalchemy", "bentoml", "mlflow", "scikit-learn", "redis"):
        assert pins[name] == lock[name], (name, pins.get(name), lock[name])
    assert f"./wheels/{wheel.name}" in wanted


def test_result_lines_fit_100_columns_at_words_and_keep_paths_whole() -> None:
    from conveyor.cli._common import fitted

    line = (
        "  Registered loan-default version 2 as @candidate; "
        + "report /a/very/long/path/"
        + "x" * 120
        + " then more words follow here"
    )
    shown = fitted(line).splitlines()
    assert all(len(s) <= 100 or " " not in s.strip() for s in shown)
    assert any(s.strip().startswith("report") or "/a/very/long/path/" in s for s in shown)
    assert "/a/very/long/path/" + "x" * 120 in fitted(line), "a path is never split"
    assert all(s.startswith("    ") for s in shown[1:]), "continuations indented past the line's own indent"
    assert fitted("short line") == "short line"


def test_the_wheel_installs_one_import_package_with_its_policies(tmp_path: Path) -> None:
    import zipfile

    uv = Path(sys.executable).parent / "uv"
    built = subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("conveyor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"conveyor", wheel.name.split("-py3")[0] + ".dist-info"}
    for folder in ("pipelines", "registry", "serving", "monitoring", "policies"):  # under conveyor/, whole
        assert f"conveyor/{folder}/__init__.py" in names
    assert "conveyor/policies/defaults/promotion.yaml" in names and "conveyor/serving/service.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_data_push_outside_a_dvc_repository_says_what_to_do(project: Path) -> None:
    result = conveyor(project, "data", "push")
    assert result.exit_code == 2  # a set-up mistake
    assert "is not a DVC repository" in result.output and "dvc init" in result.output
    assert "Traceback" not in result.output
