"""Signatures and provenance: a signed model verifies; every change to it is refused."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from conveyor.policies.errors import SignatureInvalid
from conveyor.registry.keys import load_or_create_key
from conveyor.registry.provenance import Material, build_statement, read_statement, sign_statement, verify_statement
from conveyor.registry.signing import PROVENANCE, model_files, sign_model, verify_model


@pytest.fixture
def key(tmp_path: Path):
    return load_or_create_key(tmp_path / "keys")


@pytest.fixture
def model(tmp_path: Path, key) -> Path:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "model.skops").write_bytes(bytes(range(256)) * 40)
    (folder / "sub" / "requirements.txt").write_text("scikit-learn\n")
    sign_model(folder, key.private_path)
    files = model_files(folder)
    statement = build_statement(
        files, [Material("data/x.csv", "sha256:" + "ab" * 32)], {"alpha": 0.5}, {"invocationId": "run-1"}
    )
    sign_statement(statement, key.private_key(), folder / PROVENANCE)
    return folder


def verify_all(folder: Path, key) -> None:
    verify_model(folder, key.public_path)
    verify_statement(folder / PROVENANCE, key.public_path.read_bytes(), model_files(folder))


def test_key_is_created_once_with_private_mode(tmp_path: Path, key) -> None:
    assert stat.S_IMODE(key.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.private_path.parent.stat().st_mode) == 0o700
    again = load_or_create_key(tmp_path / "keys")
    assert again.fingerprint == key.fingerprint and key.fingerprint.startswith("sha256:")


def test_signed_model_verifies_and_provenance_lists_every_file(model: Path, key) -> None:
    verify_all(model, key)
    statement = read_statement(model / PROVENANCE)
    assert {s["name"] for s in statement["subject"]} == {"MLmodel", "model.skops", "sub/requirements.txt"}
    assert statement["predicate"]["buildDefinition"]["externalParameters"] == {"alpha": "0.5"}
    assert statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]["uri"] == "data/x.csv"


def test_registered_model_meta_written_by_mlflow_is_ignored(model: Path, key) -> None:
    (model / "registered_model_meta").write_text("model_name: x\n")
    verify_all(model, key)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda m: (m / "model.skops").write_bytes((m / "model.skops").read_bytes()[:-1] + b"\x00"),
            id="flipped-byte",
        ),
        pytest.param(lambda m: (m / "extra.py").write_text("print('hi')"), id="added-file"),
        pytest.param(lambda m: (m / "sub" / "requirements.txt").unlink(), id="removed-file"),
        pytest.param(lambda m: (m / "MLmodel").rename(m / "MLmodel.yaml"), id="renamed-file"),
    ],
)
def test_changed_model_is_refused(model: Path, key, tamper) -> None:
    tamper(model)
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_model(model, key.public_path)
    with pytest.raises(SignatureInvalid, match="subjects do not match"):
        verify_statement(model / PROVENANCE, key.public_path.read_bytes(), model_files(model))


def test_another_key_is_refused(model: Path, tmp_path: Path) -> None:
    other = load_or_create_key(tmp_path / "other-keys")
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_model(model, other.public_path)
    with pytest.raises(SignatureInvalid, match="signature does not verify"):
        verify_statement(model / PROVENANCE, other.public_path.read_bytes(), model_files(model))


def test_edited_provenance_is_refused(model: Path, key) -> None:
    path = model / PROVENANCE
    envelope = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["buildDefinition"]["externalParameters"]["alpha"] = "0.9"
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(envelope))
    with pytest.raises(SignatureInvalid, match="signature does not verify"):
        verify_statement(path, key.public_path.read_bytes(), model_files(model))


def test_unsigned_model_is_refused(tmp_path: Path, key) -> None:
    folder = tmp_path / "unsigned"
    folder.mkdir()
    (folder / "MLmodel").write_text("x")
    with pytest.raises(SignatureInvalid, match="is not signed"):
        verify_model(folder, key.public_path)
