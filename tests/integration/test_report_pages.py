"""The browser check the report tests rely on sees what a page fetches and what breaks in it."""

from __future__ import annotations

from pathlib import Path

from conveyor.registry.pages import Heading, publish, self_contained
from tests.browser import open_pages


def test_the_browser_check_sees_a_fetch_an_error_and_where_the_verdict_is(tmp_path: Path) -> None:
    fetching = tmp_path / "fetching.html"
    fetching.write_text(
        '<html><head><link rel="stylesheet" href="https://cdn.example.invalid/x.css"></head>'
        "<body><p>no verdict here</p><script>throw new Error('boom')</script></body></html>"
    )
    ours = publish(
        tmp_path / "ours.html",
        self_contained(Heading("drift", "Drift of m version 1: drift (last 10 rows)", "drift: 1 of 2", "breach"), ""),
        None,
    )
    bad, good = open_pages([fetching, ours])
    assert bad.requests == ["https://cdn.example.invalid/x.css"]
    assert any("boom" in e for e in bad.errors) and bad.verdict == ""
    assert good.requests == [] and good.errors == []
    assert "Drift: drift: 1 of 2" in good.verdict and 0 <= good.verdict_top < 50
    assert good.title == "Drift of m version 1: drift (last 10 rows)"
