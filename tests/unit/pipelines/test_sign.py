"""The code state recorded in provenance: the commit, and whether the tree is dirty."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conveyor.pipelines.sign import code_state


def test_code_state_is_the_commit_and_whether_the_tree_is_dirty(tmp_path: Path) -> None:
    assert code_state(tmp_path).commit == "unknown"

    def run(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    run("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    run("add", "f.txt")
    run("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "x")
    clean = code_state(tmp_path)
    assert len(clean.commit) == 40 and clean.dirty is False
    (tmp_path / "f.txt").write_text("b")
    assert code_state(tmp_path).dirty is True
