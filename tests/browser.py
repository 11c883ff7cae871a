"""Headless Chromium with no network to reach: how the tests open the pages Conveyor writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["chromium"]


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
