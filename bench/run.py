"""Every benchmark, one after the other (`make bench`). Each prints its own baseline and ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

for script in (
    "cli_startup.py",
    "commands.py",
    "ledger.py",
    "audit.py",
    "training_flow.py",
    "promotion_gain.py",
    "llm_release.py",
    "pii.py",
    "gateway.py",
    "llm_canary.py",
    "llm_threads.py",
    "llm_monitoring.py",
):
    print(f"\n### {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
