"""The README's first command as a newcomer meets it: the demo in a fresh `git clone` of this
repository (both demos on one ledger, as `make demo` runs them, every outcome read back from the
record), in a copy outside any git work tree, and in a clone nested inside another repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.registry.dvc_files import dvc_recorded_md5
from conveyor.registry.pages import read_heading
from tests.browser import open_pages
from tests.conftest import REPO

pytestmark = pytest.mark.slow

CONVEYOR = Path(sys.executable).parent / "conveyor"


def newcomer_env() -> dict[str, str]:
    """The environment of a user's shell: none of the suite's store settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "MLFLOW_", "PREFECT_"))}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def clone_of_repo(destination: Path) -> Path:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("the repository is not a git clone here (the suite runs from one in CI)")
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(destination)], check=True)
    return destination


def demo(project: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONVEYOR), "demo", *args],
        cwd=project,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def whole_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``conveyor demo`` (both halves, one ledger) in a fresh clone, run once for this module."""
    clone = clone_of_repo(tmp_path_factory.mktemp("whole") / "conveyor")
    return clone, demo(clone, timeout=600)


@pytest.mark.timeout(900)
def test_the_whole_demo_in_a_fresh_clone_says_only_what_the_record_holds(
    whole_demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    from conveyor.api import Workspace

    clone, result = whole_demo
    assert subprocess.run(["git", "check-ignore", "-q", "dvc.lock"], cwd=clone).returncode == 1, (
        "DVC refuses a project whose dvc.lock is git-ignored"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("The record agrees:"), last
    champions = dict(re.findall(r"([\w.-]+) v(\d+)", last.split("champions:", 1)[1]))
    assert set(champions) == {"loan-default", "conveyor-assistant"}, last
    ws = Workspace.open(clone, home=str(clone / ".conveyor"))
    assert ws.stores.champion("loan-default") == champions["loan-default"]
    assistant = Workspace.open(
        clone / ".conveyor" / "demo" / "assistant" / "assistant.yaml",
        home=str(clone / ".conveyor"),
        ledger_url=ws.stores.ledger_url,
        mlflow_tracking_uri=ws.stores.tracking_uri,
    )
    assert assistant.stores.champion("conveyor-assistant") == champions["conveyor-assistant"]
    assert "Traceback" not in result.stdout + result.stderr
    assert git(clone, "status", "--porcelain") == "", "the demo leaves the clone's tracked files as they were"


@pytest.mark.timeout(900)
def test_every_report_page_and_the_index_load_offline_and_open_with_their_verdict(
    whole_demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    clone, result = whole_demo
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = clone / ".conveyor" / "reports"
    index = reports / "index.html"
    pages = sorted(p for p in reports.rglob("*.html") if p != index)
    assert f"Reports:    {index}" in result.stdout
    assert not (reports / "data-docs").exists(), "GE's Data Docs need CDNs: not offered"
    headings = {p: read_heading(p) for p in pages}
    assert all(headings.values()), [p for p, h in headings.items() if h is None]
    kinds = {h.kind for h in headings.values() if h}
    assert kinds == {"validation", "evaluation", "re-evaluation", "drift", "LLM traffic", "lineage"}, kinds
    seen = open_pages([index, *pages])
    for page in seen:
        assert page.requests == [], f"{page.page.name} fetched {page.requests[:3]}"
        assert page.errors == [], f"{page.page.name}: {page.errors[:3]}"
        assert page.verdict and 0 <= page.verdict_top < 200, f"{page.page.name} does not open with its verdict"
    by_page = {s.page: s for s in seen}
    for path, heading in headings.items():
        assert heading is not None and heading.verdict in by_page[path].verdict, path.name
        assert heading.title == by_page[path].title, path.name
        assert heading.model in {"loan-default", "conveyor-assistant"}, path.name
    listed = re.findall(r'<a href="([^"]+)">', index.read_text())
    assert sorted(listed) == sorted(p.relative_to(reports).as_posix() for p in pages), "the index links them all"
    times = [headings[reports / link].time for link in listed]  # type: ignore[union-attr]
    assert times == sorted(times, reverse=True), "newest first"
    # what the demo's loop did is on its pages: the drift that started a retraining, the LLM
    # feedback breach that started a re-evaluation, and the versions' evaluation pages
    drift = [h for h in headings.values() if h and h.kind == "drift" and h.status == "breach"]
    assert len(drift) == 1 and drift[0].caused and drift[0].caused.startswith("started a retraining")
    (llm,) = [h for h in headings.values() if h and h.kind == "LLM traffic"]
    assert llm.status == "breach" and "rated down" in " ".join(llm.reasons)
    assert llm.caused and llm.caused.startswith("started a re-evaluation")
    assert dict(llm.samples)["feedback"].startswith("3 of 3 rated down")
    for model in ("loan-default", "conveyor-assistant"):
        for version in ("1", "2"):
            evaluation = headings[reports / "evaluation" / f"{model}-v{version}.html"]
            assert evaluation is not None and evaluation.version == version and evaluation.status == "ok"


def test_the_demo_data_in_a_copy_outside_any_git_work_tree(tmp_path: Path) -> None:
    clone = clone_of_repo(tmp_path / "clone")
    copy = tmp_path / "outside" / "conveyor"
    shutil.copytree(clone, copy, ignore=shutil.ignore_patterns(".git"))
    assert subprocess.run(["git", "rev-parse"], cwd=copy, capture_output=True).returncode != 0
    result = demo(copy, "--data-only", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("The record agrees:")
    for name in ("loans.csv", "loans_drift.csv"):
        assert dvc_recorded_md5(copy / "data" / name) == dvc_recorded_md5(REPO / "data" / name)
    assert "no_scm" not in (copy / ".dvc" / "config").read_text(), "nothing written to the committed DVC config"


def test_the_demo_data_in_a_clone_nested_in_another_repository(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    outer.mkdir()
    git(outer, "init", "--quiet")
    (outer / "notes.txt").write_text("the parent's own file\n")
    clone = clone_of_repo(outer / "conveyor")
    result = demo(clone, "--data-only", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert not (outer / ".gitignore").exists(), "DVC wrote into the parent repository"
    assert sorted(git(outer, "status", "--porcelain", "--untracked-files=normal").split()) == [
        "??",
        "??",
        "conveyor/",
        "notes.txt",
    ]
    assert git(clone, "status", "--porcelain") == ""
