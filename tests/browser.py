"""Headless Chromium with no network to reach: how the tests open the pages Conveyor writes."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["Seen", "chromium", "open_pages"]


def chromium(page: Path, scratch: Path, *args: str, window: str = "1280,900") -> str:
    """Run Chromium on ``page`` with ``args`` (default: dump the DOM after its scripts ran) and
    return its standard output; skips the test where Chromium is not installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed: `make test` installs Debian's package when it can")
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-sync",
        "--proxy-server=127.0.0.1:9",  # any request out would fail: the page must not need one
        "--virtual-time-budget=10000",
        f"--window-size={window}",
        "--user-data-dir=" + str(scratch / "chromium-profile"),
        *(args or ("--dump-dom",)),
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120).stdout


@dataclass
class Seen:
    """What a page did in the browser: its requests beyond itself, its console errors, and the
    verdict it opens with (the text of ``#conveyor-verdict``, or the lineage page's banner)."""

    page: Path
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    verdict: str = ""
    verdict_top: float = -1.0  # how far down the page the verdict starts (px)
    title: str = ""


_LOCAL = ("file:", "data:", "blob:", "about:")


def open_pages(pages: list[Path], *, width: int = 1280, height: int = 900) -> list[Seen]:
    """Open each page in headless Chromium (Playwright driving Debian's Chromium) and report what
    it fetched from outside itself, what went wrong in it and what it says first. Skips the test
    where Chromium or Playwright is missing."""
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        pytest.skip("Chromium is not installed: `make test` installs Debian's package when it can")
    sync_api = pytest.importorskip("playwright.sync_api")
    seen: list[Seen] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=browser_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"],
        )
        try:
            context = browser.new_context(viewport={"width": width, "height": height}, service_workers="block")
            for path in pages:
                found = Seen(path)
                page = context.new_page()
                page.on(
                    "request", lambda r, f=found: f.requests.append(r.url) if not r.url.startswith(_LOCAL) else None
                )
                page.on("console", lambda m, f=found: f.errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, f=found: f.errors.append(str(e)))
                page.goto(path.as_uri(), wait_until="load", timeout=60_000)
                page.wait_for_timeout(300)  # let a page's scripts draw
                verdict = page.locator("#conveyor-verdict, p.verdict").first
                if verdict.count():
                    found.verdict = verdict.inner_text()
                    box = verdict.bounding_box()
                    found.verdict_top = box["y"] if box else -1.0
                found.title = page.title()
                page.close()
                seen.append(found)
        finally:
            browser.close()
    return seen
