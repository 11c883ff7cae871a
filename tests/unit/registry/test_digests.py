"""Content addresses: one way to hash, the same answer as the standard tools."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conveyor.policies.errors import NotFound
from conveyor.registry.digests import bytes_digest, file_digest, file_hashes, json_digest, parse_digest, short


def test_file_digest_matches_sha256_and_md5_in_one_read(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10_000  # spans several read chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    hashes = file_hashes(path, "md5")
    assert hashes["sha256"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert hashes["md5"] == hashlib.md5(data).hexdigest()
    assert file_digest(path) == bytes_digest(data) == hashes["sha256"]


def test_json_digest_ignores_key_order() -> None:
    assert json_digest({"a": 1, "b": [1, 2]}) == json_digest({"b": [1, 2], "a": 1})
    assert json_digest({"a": 1}) != json_digest({"a": 2})


def test_parse_digest_normalises_and_refuses_garbage() -> None:
    hexdigest = "AB" * 32
    assert parse_digest(hexdigest) == "sha256:" + "ab" * 32
    assert parse_digest(" sha256:" + hexdigest) == "sha256:" + "ab" * 32
    with pytest.raises(NotFound, match="neither a file nor a sha256 digest"):
        parse_digest("models/nothing.pkl")
    assert short("sha256:" + "ab" * 32) == "sha256:abababababab"


def test_missing_file_and_folder_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="No file at"):
        file_digest(tmp_path / "absent")
    with pytest.raises(NotFound, match="is a folder"):
        file_digest(tmp_path)
