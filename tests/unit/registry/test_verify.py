"""Verification's own rules: what a reference may be, where recorded paths point, and every link of a
signed folder, including the ways a folder is tampered with."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.policies.errors import ConveyorError
from conveyor.policies.signing import SigningPolicy
from conveyor.registry.keys import load_or_create_key
from conveyor.registry.signing import model_files, sign_model
from conveyor.registry.verify import in_project, parse_ref, verify_folder


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("loan-default/3", ("loan-default", "3", None)),
        ("loan-default@champion", ("loan-default", None, "champion")),
        ("team/model/12", ("team/model", "12", None)),
    ],
)
def test_a_reference_names_a_version_or_an_alias(ref: str, parsed: tuple) -> None:
    assert parse_ref(ref) == parsed


@pytest.mark.parametrize("ref", ["loan-default", "loan-default/latest", "@champion", "loan-default@", "/3"])
def test_anything_else_is_a_usage_error_that_shows_both_forms(ref: str) -> None:
    with pytest.raises(ConveyorError, match="does not name a model version") as caught:
        parse_ref(ref)
    assert "MODEL/VERSION" in caught.value.hint and "MODEL@ALIAS" in caught.value.hint


def test_recorded_paths_are_taken_from_the_project_root(tmp_path: Path) -> None:
    assert in_project(tmp_path, "data/loans.csv") == tmp_path / "data" / "loans.csv"
    assert in_project(tmp_path, "/elsewhere/x.csv") == Path("/elsewhere/x.csv")


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path]:
    folder, keys = tmp_path / "model", tmp_path / "keys"
    folder.mkdir()
    (folder / "model.skops").write_bytes(b"weights" * 100)
    (folder / "MLmodel").write_text("flavors: {}\n")
    sign_model(folder, load_or_create_key(keys).private_path)
    return folder, keys


def test_a_signed_folder_passes_its_signature_link(signed: tuple[Path, Path], tmp_path: Path) -> None:
    folder, keys = signed
    report = verify_folder(folder, SigningPolicy(), root=tmp_path, keys_dir=keys)
    signature = next(link for link in report.links if link.name == "signature")
    assert signature.ok, signature.detail
    assert report.model_digest is not None and len(model_files(folder)) == 2


@pytest.mark.parametrize("tamper", ["flip", "add", "remove", "rename"])
def test_a_tampered_folder_fails_the_signature_link(signed: tuple[Path, Path], tmp_path: Path, tamper: str) -> None:
    folder, keys = signed
    weights = folder / "model.skops"
    if tamper == "flip":
        data = bytearray(weights.read_bytes())
        data[3] ^= 1
        weights.write_bytes(bytes(data))
    elif tamper == "add":
        (folder / "extra.py").write_text("print('hi')\n")
    elif tamper == "remove":
        (folder / "MLmodel").unlink()
    else:
        weights.rename(folder / "model2.skops")
    report = verify_folder(folder, SigningPolicy(), root=tmp_path, keys_dir=keys)
    assert not report.ok
    assert report.first_failure is not None and report.first_failure.name == "signature"


def test_a_strangers_key_is_not_trusted(signed: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = signed
    other_keys = tmp_path / "other-keys"
    load_or_create_key(other_keys)
    report = verify_folder(folder, SigningPolicy(), root=tmp_path, keys_dir=other_keys)
    assert not report.ok and report.first_failure is not None and report.first_failure.name == "signature"
