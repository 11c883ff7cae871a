"""The documentation site builds strictly from the repository, works offline, and says what it must."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_the_site_builds_strictly_offline_with_a_page_per_user_the_api_and_the_policies(tmp_path: Path) -> None:
    site = tmp_path / "site"
    mkdocs = Path(sys.executable).parent / "mkdocs"
    built = subprocess.run(
        [mkdocs, "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    pages = {p.relative_to(site).as_posix(): p.read_text(encoding="utf-8") for p in site.rglob("*.html")}
    for page in ("data-scientists", "ci", "operators", "auditors", "llm", "python", "policies", "reference"):
        assert f"{page}/index.html" in pages, page
    for name, text in pages.items():  # nothing a page loads comes from the network
        assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"https?://", text), name
    ci = pages["ci/index.html"]
    assert "not enough data, or nothing to act on" in ci and "<td><code>3</code></td>" in ci
    python = pages["python/index.html"]  # the API reference, from the docstrings
    assert "conveyor.api.Workspace.promote" in python and "Point <code>@champion</code> back" in python
    policies = pages["policies/index.html"]
    assert "beat_champion" in policies and "min_delta" in policies and "CanaryPolicy" in policies
    assert "--8&lt;--" not in "".join(pages.values()) and "--8<--" not in "".join(pages.values())
