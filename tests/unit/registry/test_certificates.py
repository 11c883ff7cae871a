"""Signing with an organisation CA: Conveyor checks what model-signing does not (expiry, identity)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from conveyor.policies.errors import SignatureInvalid
from conveyor.registry.signing import sign_model_with_certificate, verify_model_with_chain
from tests.ca import OrgCA

RELEASE = "ml-release@example.org"


@pytest.fixture
def ca(tmp_path: Path) -> OrgCA:
    return OrgCA(tmp_path / "ca")


def model(tmp_path: Path, name: str = "model") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "model.skops").write_bytes(b"\x01\x02" * 500)
    return folder


def sign(folder: Path, ca: OrgCA, issued) -> None:
    sign_model_with_certificate(folder, issued.key, issued.certificate, [ca.root])


def test_pinned_identity_from_the_ca_verifies(tmp_path: Path, ca: OrgCA) -> None:
    folder = model(tmp_path)
    sign(folder, ca, ca.issue(RELEASE))
    identity, pem = verify_model_with_chain(folder, [ca.root], (RELEASE,), now=datetime.now(UTC))
    assert identity == RELEASE and pem.startswith(b"-----BEGIN PUBLIC KEY-----")


def test_another_identity_from_the_same_ca_is_refused(tmp_path: Path, ca: OrgCA) -> None:
    folder = model(tmp_path)
    sign(folder, ca, ca.issue("intern@example.org"))
    with pytest.raises(SignatureInvalid, match=r"names intern@example\.org, not a pinned identity"):
        verify_model_with_chain(folder, [ca.root], (RELEASE,), now=datetime.now(UTC))


def test_expired_signer_certificate_is_refused(tmp_path: Path, ca: OrgCA) -> None:
    folder = model(tmp_path)
    sign(folder, ca, ca.issue(RELEASE, expired=True))
    with pytest.raises(SignatureInvalid, match="is not valid now"):
        verify_model_with_chain(folder, [ca.root], (RELEASE,), now=datetime.now(UTC))


def test_certificate_from_another_ca_is_refused(tmp_path: Path, ca: OrgCA) -> None:
    rogue = OrgCA(tmp_path / "rogue", name="Rogue CA")
    folder = model(tmp_path)
    sign(folder, rogue, rogue.issue(RELEASE))
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_model_with_chain(folder, [ca.root], (RELEASE,), now=datetime.now(UTC))


def test_changed_file_is_refused(tmp_path: Path, ca: OrgCA) -> None:
    folder = model(tmp_path)
    sign(folder, ca, ca.issue(RELEASE))
    (folder / "model.skops").write_bytes(b"\x00" * 1000)
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_model_with_chain(folder, [ca.root], (RELEASE,), now=datetime.now(UTC))
