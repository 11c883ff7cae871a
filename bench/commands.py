"""The commands a user waits on, each a fresh process as typed, against baselines in the same run.

    .venv/bin/python bench/commands.py [--repeat 3]

Run it on an installed checkout (`make sync` compiles the bytecode; this machine sets
PYTHONDONTWRITEBYTECODE, so without it every process compiles every module from source). On a copy
of the demo project (60,000 rows): `conveyor train` against `bench/bare_train.py` (the
same library calls without Conveyor: goal <= 1.2x), then `conveyor verify`, `audit` and `lineage`
of the champion (goal <= 2 s each), with `lineage` by digest and a bare `python -c "import mlflow"`
as the floors. Runs alternate so that load on the shared machine falls on both sides.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    took = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-commands-"))
    project = work / "project"
    project.mkdir()
    shutil.copy(ROOT / "conveyor.yaml", project / "conveyor.yaml")
    shutil.copytree(ROOT / "policies", project / "policies", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "MLFLOW_", "PREFECT_"))}
    env |= {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    conveyor = [PYTHON, "-m", "conveyor"]
    try:
        print("setting up: demo data, a trained and promoted champion...", flush=True)
        timed([*conveyor, "demo", "--no-loop"], project, env)
        from conveyor.registry.digests import file_digest

        data = file_digest(project / "data" / "loans.csv")
        rows: dict[str, list[float]] = {}
        cases = {
            "conveyor train": [*conveyor, "train"],
            "bare library calls": "bare",
            "conveyor verify loan-default@champion": [*conveyor, "verify", "loan-default@champion"],
            "conveyor audit loan-default@champion": [*conveyor, "audit", "loan-default@champion"],
            "conveyor lineage loan-default@champion --up": [*conveyor, "lineage", "loan-default@champion", "--up"],
            "conveyor lineage <data digest> --down": [*conveyor, "lineage", data, "--down"],
            'python -c "import mlflow"': [PYTHON, "-c", "import mlflow"],
            "conveyor --help": [*conveyor, "--help"],
        }
        for i in range(args.repeat):
            for name, command in cases.items():
                if command == "bare":
                    command = [PYTHON, str(ROOT / "bench" / "bare_train.py"), str(project), str(work / f"bare-{i}")]
                rows.setdefault(name, []).append(timed(command, project, env))
            print(f"round {i + 1} of {args.repeat} done", flush=True)
        median = {name: statistics.median(times) for name, times in rows.items()}
        print(f"\n{'command (fresh process)':48s} {'median':>8s} {'min':>8s}   ratio / goal")
        for name, times in rows.items():
            note = ""
            if name == "conveyor train":
                note = f"{median[name] / median['bare library calls']:.2f}x bare (goal <= 1.2x)"
            elif name.startswith(("conveyor verify", "conveyor audit", "conveyor lineage")):
                note = f"goal <= 2 s: {'met' if median[name] <= 2 else 'NOT met'}"
            print(f"{name:48s} {median[name]:7.2f}s {min(times):7.2f}s   {note}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
