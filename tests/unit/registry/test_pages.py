"""The report pages' common heading, the tag that carries it, and the index built from the pages."""

from __future__ import annotations

import os
from pathlib import Path

from conveyor.registry.pages import Heading, inject_heading, publish, read_heading, self_contained, write_index


def _heading(**overrides: object) -> Heading:
    fields: dict[str, object] = {
        "kind": "drift",
        "title": "Drift of m version 2: drift (last 100 rows)",
        "verdict": 'drift: 3 of 5 columns drifted <"quoted">',
        "status": "breach",
        "model": "m",
        "version": "2",
        "window": "last 100 rows",
        "reasons": ["age: p-value 0.001"],
        "samples": [("reference", "900 rows"), ("live", "100 logged requests")],
        "caused": "started a retraining (first breach)",
        "time": "2026-12-07T10:00:00+00:00",
    }
    return Heading(**(fields | overrides))  # type: ignore[arg-type]


def test_a_page_carries_its_heading_whole_and_escaped(tmp_path: Path) -> None:
    heading = _heading()
    page = publish(tmp_path / "p.html", self_contained(heading, "<p>body</p>"), None)
    text = page.read_text()
    assert read_heading(page) == heading
    assert "&lt;&quot;quoted&quot;&gt;" in text and '<"quoted">' not in text
    assert text.index('id="conveyor-verdict"') < text.index("<p>body</p>"), "the verdict comes first"
    assert "default-src 'none'" in text and "http://" not in text and "https://" not in text
    assert "What it caused:</b> started a retraining" in text


def test_a_heading_injected_twice_is_replaced_not_stacked(tmp_path: Path) -> None:
    page = tmp_path / "evidently.html"
    page.write_text("<!doctype html><html><head><meta charset=utf-8></head><body><div id=root></div></body></html>")
    inject_heading(page, _heading(caused="nothing yet"), "<table id=cols></table>")
    inject_heading(page, _heading(), "<table id=cols></table>")
    text = page.read_text()
    assert text.count('id="conveyor-verdict"') == 1 and text.count("<title>") == 1 and text.count("id=cols") == 1
    assert read_heading(page) == _heading() and "nothing yet" not in text
    assert text.index('id="conveyor-verdict"') < text.index("<div id=root>")


def test_the_index_lists_every_page_newest_first_with_its_verdict(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    old = _heading(
        kind="validation", title="Validation of a.csv", verdict="passed", status="ok", time="2026-12-01T00:00:00+00:00"
    )
    new = _heading(time="2026-12-07T00:00:00+00:00")
    publish(reports / "validation" / "a.html", self_contained(old, ""), None)
    publish(reports / "drift" / "b.html", self_contained(new, ""), reports)
    foreign = reports / "other.html"
    foreign.write_text("<html><body>a page written by hand</body></html>")
    os.utime(foreign, (0, 0))  # 1970: the oldest
    index = write_index(reports)
    text = index.read_text()
    links = [text.index(f'href="{p}"') for p in ("drift/b.html", "validation/a.html", "other.html")]
    assert links == sorted(links), "newest first; a page without a heading by its file time"
    assert "no verdict recorded" in text and 'href="index.html"' not in text
    summary = read_heading(index)
    assert summary is not None and summary.verdict == "3 pages, 1 with a breach or a failure"
    assert summary.status == "breach"
    assert not list(reports.rglob("*.partial")), "pages are written whole, by rename"


def test_an_empty_reports_folder_has_an_index_that_says_so(tmp_path: Path) -> None:
    heading = read_heading(write_index(tmp_path / "reports"))
    assert heading is not None and heading.verdict == "no reports yet" and heading.status == "inconclusive"


def test_a_heading_with_many_long_reasons_still_reaches_the_index(tmp_path: Path) -> None:
    many = [f"column_{i} expect_column_values_to_be_in_set: " + "x" * 900 for i in range(60)]
    heading = _heading(kind="validation", verdict="FAILED", status="failed", reasons=many)
    page = publish(tmp_path / "reports" / "v.html", self_contained(heading, ""), tmp_path / "reports")
    read = read_heading(page)
    assert read is not None and read.status == "failed" and len(read.reasons) == 13
    assert read.reasons[-1] == "and 48 more (on the page)" and all(len(r) <= 500 for r in read.reasons)
    assert page.read_text().count("column_59") == 1, "the page itself shows every reason, the tag does not"
