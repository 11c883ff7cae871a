"""The organisation-CA option end to end: train signs with a certificate, verify checks chain,
expiry and the pinned identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.pipelines.training import run_training
from tests.ca import OrgCA
from tests.conftest import open_workspace

pytestmark = pytest.mark.slow
RELEASE = "ml-release@example.org"


def test_model_signed_with_an_organisation_certificate(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = OrgCA(project / "keys")
    signer = ca.issue(RELEASE)
    policy = {
        "sign_with": "certificate",
        "trust_project_key": False,
        "certificate": {
            "private_key": str(signer.key.relative_to(project)),
            "certificate": str(signer.certificate.relative_to(project)),
            "chain": [str(ca.root.relative_to(project))],
        },
        "organisation_ca": {"chain": [str(ca.root.relative_to(project))], "identities": [RELEASE]},
    }
    (project / "policies" / "signing.yaml").write_text(yaml.safe_dump(policy))
    home = tmp_path / ".conveyor"
    outcome = run_training(open_workspace(project, home, actor="ci"))
    assert outcome.version == "1"

    runner = CliRunner()
    result = runner.invoke(app, ["--config", str(project / "conveyor.yaml"), "verify", "loan-default/1", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["signer"] == RELEASE, result.output

    policy["organisation_ca"]["identities"] = ["someone-else@example.org"]
    (project / "policies" / "signing.yaml").write_text(yaml.safe_dump(policy))
    result = runner.invoke(app, ["--config", str(project / "conveyor.yaml"), "verify", "loan-default/1", "--json"])
    link = next(link for link in json.loads(result.stdout)["links"] if not link["ok"])
    assert result.exit_code == 1 and link["name"] == "signature" and "not a pinned identity" in link["detail"]
