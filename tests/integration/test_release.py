"""verify, promote and rollback against a real registry: every tampering is refused, naming the link."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.pipelines.training import run_training
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger
from tests.conftest import POLICY_CODE, REPO, open_workspace

pytestmark = pytest.mark.slow
runner = CliRunner()
NAME = "loan-default"


@dataclass(frozen=True)
class Registry:
    root: Path
    home: Path

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow_uri)

    def artifacts(self, version: str) -> Path:
        client = self.client()
        model_id = client.get_model_version(NAME, version).source.split("/")[-1]
        return Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))

    def alias(self, alias: str) -> str | None:
        try:
            return str(self.client().get_model_version_by_alias(NAME, alias).version)
        except Exception:
            return None


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, small_loans: Path) -> Registry:
    """Three registered versions: 1 and 2 alike, 3 deliberately worse."""
    base = tmp_path_factory.mktemp("registry")
    root, home = base / "project", base / ".conveyor"
    (root / "data").mkdir(parents=True)
    shutil.copytree(REPO / "policies", root / "policies", ignore=POLICY_CODE)
    shutil.copy(small_loans, root / "data" / "loans.csv")
    config = (REPO / "conveyor.yaml").read_text()
    reg = Registry(root, home)

    def train() -> None:
        run_training(open_workspace(root, home, tracking_uri=reg.mlflow_uri, actor="trainer"))

    (root / "conveyor.yaml").write_text(config)
    train()
    train()
    (root / "conveyor.yaml").write_text(
        config.replace("max_iter: 200, learning_rate: 0.08", "max_iter: 3, learning_rate: 0.01")
    )
    train()
    (root / "conveyor.yaml").write_text(config)
    return reg


@pytest.fixture
def reg(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    """The registry with no release aliases set, and this test's commands pointed at it."""
    monkeypatch.setenv("CONVEYOR_HOME", str(registry.home))
    client = registry.client()
    for alias in ("champion", "previous-champion", "canary"):
        with contextlib.suppress(Exception):
            client.delete_registered_model_alias(NAME, alias)
    yield registry


def conveyor(reg: Registry, *args: str):
    return runner.invoke(app, ["--config", str(reg.root / "conveyor.yaml"), *args])


def verify_json(reg: Registry, ref: str = f"{NAME}/1") -> dict:
    result = conveyor(reg, "verify", ref, "--json")
    return {"exit": result.exit_code, **json.loads(result.stdout)}


def failed_link(report: dict) -> tuple[str, str]:
    link = next(link for link in report["links"] if not link["ok"])
    return link["name"], link["detail"]


@pytest.fixture
def model_dir(reg: Registry) -> Iterator[Path]:
    """Version 1's stored files, restored after the test has tampered with them."""
    folder = reg.artifacts("1")
    backup = folder.with_name("backup")
    shutil.copytree(folder, backup)
    yield folder
    shutil.rmtree(folder)
    backup.rename(folder)


def test_intact_version_verifies_every_link(reg: Registry) -> None:
    report = verify_json(reg)
    assert report["exit"] == 0 and report["ok"] is True
    assert [link["name"] for link in report["links"]] == [
        "registry",
        "files",
        "signature",
        "provenance",
        "tags",
        "ledger",
    ]
    by_alias = verify_json(reg, f"{NAME}@candidate")
    assert by_alias["ok"] and by_alias["version"] == "3"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda m: (m / "model.skops").write_bytes(b"\x00" + (m / "model.skops").read_bytes()[1:]), id="flipped-byte"
        ),
        pytest.param(lambda m: (m / "backdoor.py").write_text("import os"), id="added-file"),
        pytest.param(lambda m: (m / "requirements.txt").unlink(), id="removed-file"),
        pytest.param(lambda m: (m / "conda.yaml").rename(m / "conda.yml"), id="renamed-file"),
    ],
)
def test_tampered_files_are_refused_at_the_signature(reg: Registry, model_dir: Path, tamper) -> None:
    tamper(model_dir)
    report = verify_json(reg)
    assert report["exit"] == 1 and report["ok"] is False
    assert failed_link(report)[0] == "signature"


def test_bundle_swapped_from_another_version_is_refused(reg: Registry, model_dir: Path) -> None:
    shutil.copy(reg.artifacts("2") / "conveyor" / "model.sig", model_dir / "conveyor" / "model.sig")
    assert failed_link(verify_json(reg))[0] == "signature"


def test_edited_provenance_is_refused(reg: Registry, model_dir: Path) -> None:
    path = model_dir / "conveyor" / "provenance.dsse.json"
    envelope = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["buildDefinition"]["externalParameters"]["data"] = "data/other.csv"
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(envelope))
    name, detail = failed_link(verify_json(reg))
    assert name == "provenance" and "signature does not verify" in detail


def test_wrong_key_is_refused(reg: Registry) -> None:
    keys = reg.home / "keys"
    keys.rename(reg.home / "keys-real")
    try:
        conveyor(reg, "keys", "init")  # a new, different project key
        name, detail = failed_link(verify_json(reg))
        assert name == "signature" and "no trusted key verifies" in detail
    finally:
        shutil.rmtree(keys)
        (reg.home / "keys-real").rename(keys)


def test_registry_tag_edited_after_registration_is_refused(reg: Registry) -> None:
    client = reg.client()
    real = client.get_model_version(NAME, "1").tags["conveyor.data_digest"]
    client.set_model_version_tag(NAME, "1", "conveyor.data_digest", "sha256:" + "0" * 64)
    try:
        name, detail = failed_link(verify_json(reg))
        assert name == "tags" and "conveyor.data_digest" in detail
    finally:
        client.set_model_version_tag(NAME, "1", "conveyor.data_digest", real)


def test_unknown_version_is_a_usage_error(reg: Registry) -> None:
    result = conveyor(reg, "promote", f"{NAME}/99", "--to", "canary")
    assert result.exit_code == 2 and "has no loan-default/99" in result.stderr
    assert "loan-default has versions 1, 2, 3" in result.stderr
    misspelt = conveyor(reg, "promote", "loan-defualt/1", "--to", "canary")
    assert misspelt.exit_code == 2 and "Did you mean loan-default?" in misspelt.stderr


def promote(reg: Registry, ref: str, target: str, *extra: str) -> tuple[int, dict]:
    result = conveyor(reg, "promote", ref, "--to", target, "--json", *extra)
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {"stderr": result.stderr}


def test_promotion_moves_aliases_and_rollback_restores_the_former_champion(reg: Registry) -> None:
    assert promote(reg, f"{NAME}/1", "champion")[0] == 0
    code, outcome = promote(reg, f"{NAME}/2", "champion")
    assert code == 0 and outcome["previous"] == "1"
    assert (reg.alias("champion"), reg.alias("previous-champion")) == ("2", "1")
    before = _events(reg)
    planned = conveyor(reg, "rollback", NAME, "--dry-run", "--json")
    assert planned.exit_code == 0
    assert json.loads(planned.stdout) == {"model": NAME, "from": "2", "to": "1", "dry_run": True}
    assert (reg.alias("champion"), reg.alias("previous-champion")) == ("2", "1") and _events(reg) == before
    result = conveyor(reg, "rollback", NAME)
    assert result.exit_code == 0 and "from version 2 to version 1" in result.stdout
    assert (reg.alias("champion"), reg.alias("previous-champion")) == ("1", None)
    with Ledger(f"sqlite:///{reg.home / 'ledger.db'}") as ledger:
        events = list(ledger.iter_events())
        assert ledger.verify_chain().ok
    promoted = [e for e in events if e.kind == "model.promoted"]
    assert promoted[-1].details["policy"].endswith("promotion.yaml") and promoted[-1].actor
    assert events[-1].kind == "model.rolled_back" and events[-1].details == {"name": NAME, "from": "2", "to": "1"}


def test_status_names_versions_aliases_and_the_events_behind_them(reg: Registry) -> None:
    candidate = reg.alias("candidate")
    reg.client().set_registered_model_alias(NAME, "candidate", "1")
    try:
        assert promote(reg, f"{NAME}/1", "champion")[0] == 0
        assert reg.alias("candidate") is None  # a champion is no longer the candidate
    finally:
        reg.client().set_registered_model_alias(NAME, "candidate", candidate)
    result = conveyor(reg, "status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    aliases = {a: str(v) for a, v in reg.client().get_registered_model(NAME).aliases.items()}
    assert status["model"] == NAME and status["aliases"] == aliases and aliases["champion"] == "1"
    assert [v["version"] for v in status["versions"]] == ["1", "2", "3"]
    assert "champion" in status["versions"][0]["aliases"] and status["versions"][0]["digest"].startswith("sha256:")
    assert status["canary"] == {"version": None, "last_verdict": None} and status["drift"] is None
    assert status["ledger"]["events"] == _events(reg)
    text = conveyor(reg, "status").stdout
    assert "champion" in text.splitlines()[1] and f"{_events(reg)} events" in text
    unknown = conveyor(reg, "status", "loan-defualt")
    assert unknown.exit_code == 2 and "Did you mean loan-default?" in unknown.stderr


def _events(reg: Registry) -> int:
    with Ledger(f"sqlite:///{reg.home / 'ledger.db'}") as ledger:
        return len(list(ledger.iter_events()))


def test_candidate_worse_than_the_champion_is_refused(reg: Registry) -> None:
    assert promote(reg, f"{NAME}/1", "champion")[0] == 0
    code, outcome = promote(reg, f"{NAME}/3", "champion")
    assert code == 1 and outcome["ok"] is False
    assert any("does not beat champion v1" in r for r in outcome["reasons"])
    assert reg.alias("champion") == "1"


def test_thresholds_not_met_and_dry_run_change_nothing(reg: Registry) -> None:
    code, outcome = promote(reg, f"{NAME}/3", "canary", "--dry-run")
    assert code == 1 and any("is below the minimum 0.8" in r for r in outcome["reasons"])
    assert outcome["ledger_event"] is None and reg.alias("canary") is None
    code, outcome = promote(reg, f"{NAME}/1", "canary", "--dry-run")
    assert code == 0 and reg.alias("canary") is None


def test_a_version_whose_canary_was_rolled_back_needs_force_naming_that_rollback(reg: Registry) -> None:
    assert promote(reg, f"{NAME}/1", "champion")[0] == 0
    with Ledger(f"sqlite:///{reg.home / 'ledger.db'}") as ledger:
        digest = reg.client().get_model_version(NAME, "2").tags["conveyor.version_digest"]
        rolled_back = ledger.append(
            EventKind.CANARY_ROLLED_BACK,
            inputs={"version": digest},
            outputs=[],
            details={"name": NAME, "version": "2", "reasons": ["latency regressed: median 90 ms vs 20 ms"]},
        ).seq
    code, outcome = promote(reg, f"{NAME}/2", "canary")
    refusal = outcome["reasons"][-1]
    assert code == 1 and f"rolled back (event #{rolled_back}: latency regressed" in refusal
    assert f"--force --rollback {rolled_back}" in refusal and reg.alias("canary") is None
    assert promote(reg, f"{NAME}/2", "canary", "--force")[0] == 2  # --force alone names nothing
    wrong = promote(reg, f"{NAME}/2", "canary", "--force", "--rollback", str(rolled_back - 1))
    assert wrong[0] == 1, wrong
    code, outcome = promote(reg, f"{NAME}/2", "canary", "--force", "--rollback", str(rolled_back))
    assert code == 0 and "promoted anyway, as --force named it" in outcome["reasons"][-1]
    with Ledger(f"sqlite:///{reg.home / 'ledger.db'}") as ledger:
        assert ledger.latest(["model.promoted"], limit=1)[0].details["forced_after_rollback"] == rolled_back
    code, outcome = promote(reg, f"{NAME}/2", "champion")  # as the service does when that canary then passes
    assert code == 0, outcome


def test_malformed_policy_file_is_a_clear_error(reg: Registry) -> None:
    policy = reg.root / "policies" / "promotion.yaml"
    original = policy.read_text()
    try:
        policy.write_text(original.replace("roc_auc: {min: 0.80}", "roc_auc: {minimum: 0.80}"))
        result = conveyor(reg, "promote", f"{NAME}/1", "--to", "canary")
        assert result.exit_code == 2
        assert "is not a valid policy" in result.stderr and "thresholds.roc_auc.minimum" in result.stderr
    finally:
        policy.write_text(original)


def test_two_promotions_at_once_leave_one_consistent_state(reg: Registry) -> None:
    env = {**os.environ, "CONVEYOR_HOME": str(reg.home)}
    command = [sys.executable, "-m", "conveyor", "--config", str(reg.root / "conveyor.yaml"), "promote"]
    runs = [
        subprocess.Popen(
            [*command, f"{NAME}/{v}", "--to", "champion", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in ("1", "2")
    ]
    outcomes = [json.loads(p.communicate(timeout=300)[0]) for p in runs]
    assert all(o["ok"] for o in outcomes), outcomes
    with Ledger(f"sqlite:///{reg.home / 'ledger.db'}") as ledger:
        assert ledger.verify_chain().ok
        promoted = [e for e in ledger.iter_events() if e.kind == "model.promoted"][-2:]
    first, second = promoted
    assert reg.alias("champion") == second.details["version"]
    assert second.details["champion_before"] == first.details["version"] == reg.alias("previous-champion")


def test_the_ci_example_runs_these_commands(reg: Registry) -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "promote.yml").read_text())
    steps = [s["run"] for s in workflow["jobs"]["promote"]["steps"] if "conveyor" in s.get("run", "")]
    assert len(steps) == 3
    env = {
        **os.environ,
        "CONVEYOR_HOME": str(reg.home),
        "TARGET": "canary",
        "CONVEYOR_PROJECT_FILE": str(reg.root / "conveyor.yaml"),
    }

    def run_steps() -> list[subprocess.CompletedProcess]:
        return [
            subprocess.run(
                step.replace(".venv/bin/conveyor", str(REPO / ".venv" / "bin" / "conveyor")),
                shell=True,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            for step in steps
        ]

    verify, dry_run, real = run_steps()  # @candidate is version 3, the worse one
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True
    assert dry_run.returncode == real.returncode == 1 and reg.alias("canary") is None
    assert "is below the minimum 0.8" in " ".join(json.loads(real.stdout)["reasons"])

    reg.client().set_registered_model_alias(NAME, "candidate", "1")
    try:
        assert [done.returncode for done in run_steps()] == [0, 0, 0]
        assert reg.alias("canary") == "1"
    finally:
        reg.client().set_registered_model_alias(NAME, "candidate", "3")


def test_trusted_key_whose_file_does_not_match_its_pin_is_named(reg: Registry) -> None:
    from conveyor.registry.keys import load_or_create_key

    other = load_or_create_key(reg.root / "other-keys")
    policy = reg.root / "policies" / "signing.yaml"
    original = policy.read_text()
    pinned = "sha256:" + "1" * 64
    try:
        policy.write_text(
            yaml.safe_dump(
                {
                    "trust_project_key": False,
                    "trusted_keys": [
                        {
                            "name": "ci",
                            "public_key": str(other.public_path.relative_to(reg.root)),
                            "fingerprint": pinned,
                        }
                    ],
                }
            )
        )
        name, detail = failed_link(verify_json(reg))
        assert name == "signature" and f"has fingerprint {other.fingerprint}, not the pinned {pinned}" in detail
    finally:
        policy.write_text(original)


PAYLOAD = '''
import pathlib


class Payload:
    """What an attacker would have skops build: its code runs as the object is loaded."""

    def __setstate__(self, state):
        pathlib.Path(state["marker"]).write_text("ran")
'''


@pytest.fixture
def payload(reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Any]]:
    """An importable attacker's class, the marker it would write, and a way to plant it in a
    version's stored files (its model.skops, and its class added to the MLmodel's trusted types)."""
    import skops.io

    (tmp_path / "attacker_payload.py").write_text(PAYLOAD)
    monkeypatch.syspath_prepend(str(tmp_path))
    import attacker_payload  # type: ignore[import-not-found]

    marker = tmp_path / "payload-ran"
    planted: list[tuple[Path, Path]] = []

    def plant(version: str) -> None:
        folder = reg.artifacts(version)
        backup = folder.with_name(f"backup-{version}")
        shutil.copytree(folder, backup)
        planted.append((folder, backup))
        thing = attacker_payload.Payload()
        thing.__dict__["marker"] = str(marker)
        skops.io.dump(thing, folder / "model.skops")
        mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
        mlmodel["flavors"]["sklearn"]["skops_trusted_types"].append("attacker_payload.Payload")
        (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))

    yield marker, plant
    for folder, backup in planted:
        shutil.rmtree(folder)
        backup.rename(folder)


def test_a_tampered_champion_never_runs_in_a_promotion_which_is_refused(reg: Registry, payload: Any) -> None:
    marker, plant = payload
    assert promote(reg, f"{NAME}/1", "champion")[0] == 0
    plant("1")  # version 2 was trained with no champion: promotion must score the champion itself
    code, outcome = promote(reg, f"{NAME}/2", "champion")
    assert code == 1 and outcome["ok"] is False, outcome
    assert any("The champion, loan-default version 1, does not verify (signature:" in r for r in outcome["reasons"])
    assert not marker.exists(), "the attacker's class ran"
    assert reg.alias("champion") == "1"


def test_a_tampered_candidate_never_runs_and_is_refused(reg: Registry, payload: Any) -> None:
    marker, plant = payload
    assert promote(reg, f"{NAME}/1", "champion")[0] == 0
    plant("2")
    code, outcome = promote(reg, f"{NAME}/2", "champion")
    assert code == 1 and any("verification failed at the signature link" in r for r in outcome["reasons"]), outcome
    assert not marker.exists(), "the attacker's class ran"


def test_a_signed_model_asking_to_trust_a_type_outside_the_list_is_not_loaded(reg: Registry) -> None:
    from conveyor.policies.errors import SignatureInvalid
    from conveyor.registry.loading import load_estimator, verified_copy

    ws = open_workspace(reg.root, reg.home, tracking_uri=reg.mlflow_uri)
    with ws.ledger() as ledger, verified_copy(ws, f"{NAME}/1", ledger, what="The model") as (report, files):
        assert report.ok and (files / "model.skops").stat().st_mode & 0o222 == 0  # a read-only private copy
        assert load_estimator(files, ws.loadable_types()).predict_proba  # the project's own types load
        with pytest.raises(SignatureInvalid, match=r"outside the project's loadable types: .*TreePredictor"):
            load_estimator(files, ("numpy.*",))
