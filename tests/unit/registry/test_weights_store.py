"""The weights store owns its bytes: copies (never hard links) of the installed package's GGUF,
read-only; a write to one copy reaches no other, is refused at load, and is repaired from the package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.policies.errors import SignatureInvalid
from conveyor.policies.llm import load_llm_project
from conveyor.registry.digests import file_digest
from conveyor.registry.weights import link_weights, resolve_weights, store_state
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def sha256(path: Path) -> str:
    return file_digest(path).removeprefix("sha256:")


def test_a_byte_written_to_the_store_reaches_nothing_else_is_refused_and_is_repaired(tmp_path: Path) -> None:
    source = load_llm_project(REPO / "assistant.yaml").model
    store = tmp_path / "weights"
    weights = resolve_weights(source, store, lock=REPO / "uv.lock")
    from importlib import metadata

    packaged = Path(str(metadata.distribution(source.package).locate_file(source.file)))
    stored = weights.path
    assert stored.stat().st_ino != packaged.stat().st_ino and stored.stat().st_nlink == 1  # a copy, not a link
    assert stored.stat().st_mode & 0o222 == 0  # read-only

    release = tmp_path / "release"
    release.mkdir()
    (release / "release.json").write_text(json.dumps({"weights": weights.record()}))
    placed = link_weights(release, store)
    assert placed is not None and placed.stat().st_ino != stored.stat().st_ino and placed.stat().st_nlink == 1

    stored.chmod(0o644)  # as an attacker (or an accident) with write access would
    with stored.open("r+b") as handle:
        handle.seek(1_000)
        handle.write(b"\xff")
    assert sha256(packaged) == source.sha256, "the installed package was corrupted with the store"
    assert sha256(placed) == source.sha256, "another release's copy was corrupted with the store"
    assert store_state(store, source.sha256) == "damaged"

    other = tmp_path / "other-release"
    other.mkdir()
    (other / "release.json").write_text(json.dumps({"weights": weights.record()}))
    with pytest.raises(SignatureInvalid, match="is damaged") as refused:
        link_weights(other, store)
    assert "llm weights" in str(refused.value.hint) and not (other / weights.record()["file"]).exists()

    resolve_weights(source, store, lock=REPO / "uv.lock")  # what `conveyor llm weights` does
    assert store_state(store, source.sha256) == "intact" and stored.stat().st_mode & 0o222 == 0


def test_the_weights_command_says_what_it_found_and_did(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conveyor.cli import app

    def weights() -> str:
        result = CliRunner().invoke(app, ["--config", str(REPO / "assistant.yaml"), "llm", "weights"])
        assert result.exit_code == 0, result.output
        return result.stdout

    assert "missing: copied from the package" in weights()
    assert "intact: nothing to do" in weights()
    stored = next((tmp_path / ".conveyor" / "weights").glob("*.gguf"))
    stored.chmod(0o644)
    with stored.open("r+b") as handle:
        handle.write(b"\x00")
    assert "damaged: rebuilt from the package" in weights()
