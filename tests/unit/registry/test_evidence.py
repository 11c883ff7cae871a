"""Evidence bundles refuse what is not one, a hostile archive, and a manifest signed by someone else."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from conveyor.registry.evidence import EVIDENCE_TYPE, describe, verify_evidence
from conveyor.registry.keys import load_or_create_key
from conveyor.registry.provenance import sign_envelope


def archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_file_that_is_not_an_archive_fails_the_manifest_link(tmp_path: Path) -> None:
    bogus = tmp_path / "evidence.tar.gz"
    bogus.write_text("not a tarball")
    report = verify_evidence(bogus)
    assert (
        not report.ok
        and report.links[0].name == "manifest"
        and "not a readable evidence bundle" in report.links[0].detail
    )
    assert "does NOT verify" in describe(report)


def test_an_archive_without_a_signed_manifest_is_not_a_bundle(tmp_path: Path) -> None:
    report = verify_evidence(archive(tmp_path / "b.tar.gz", {"evidence/readme.txt": b"hello"}))
    assert not report.ok and "has no signed manifest" in report.links[0].detail


def test_a_member_that_escapes_the_folder_is_refused(tmp_path: Path) -> None:
    report = verify_evidence(archive(tmp_path / "b.tar.gz", {"../../escape.txt": b"x"}))
    assert not report.ok and not (tmp_path.parent / "escape.txt").exists()


def test_a_manifest_signed_by_another_key_than_the_pinned_one_is_refused(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "keys")
    envelope = sign_envelope({"format": "x"}, EVIDENCE_TYPE, key.private_key())
    bundle = archive(
        tmp_path / "b.tar.gz",
        {
            "evidence/manifest.dsse.json": json.dumps(envelope).encode(),
            "evidence/signer.pub.pem": key.public_path.read_bytes(),
        },
    )
    pinned = "sha256:" + "0" * 64
    report = verify_evidence(bundle, pinned=pinned)
    assert not report.ok and f"not the pinned {pinned}" in report.links[0].detail
