"""The training flow on the demo data: wall time per stage, Prefect flow vs the same stages called
directly in one process, with Prefect cold (first flow run of the process) and warm.

    .venv/bin/python bench/training_flow.py [--data data/loans.csv] [--cli]

--cli also times `conveyor train` as a user runs it (a fresh process: imports, ephemeral API).
Goal: flow/direct <= 1.5.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def workspace(home: Path):
    from conveyor.registry.workspace import Workspace

    return Workspace.open(
        ROOT,
        home=str(home),
        ledger_url=f"sqlite:///{home / 'ledger.db'}",
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        actor="bench",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "loans.csv")
    parser.add_argument("--cli", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    os.environ["CONVEYOR_HOME"] = str(work / "cli")
    from conveyor.registry.workspace import Workspace, quiet_libraries

    Workspace.open(ROOT).prepare()
    quiet_libraries()
    try:
        if args.cli:
            start = time.perf_counter()
            subprocess.run(
                [str(ROOT / ".venv" / "bin" / "conveyor"), "train", "--data", str(args.data)],
                check=True,
                capture_output=True,
                env=os.environ,
            )
            print(f"`conveyor train` as a user runs it (fresh process): {time.perf_counter() - start:6.1f} s")
        run(work, args.data)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, data: Path) -> None:
    from prefect import flow

    from conveyor.pipelines.flows import as_task
    from conveyor.pipelines.training import run_training

    stage_times: dict[str, dict[str, float]] = defaultdict(dict)

    def timed(label: str, runner):
        def run_stage(name, function, *args, **kwargs):
            def body(*a, **k):
                start = time.perf_counter()
                try:
                    return function(*a, **k)
                finally:
                    stage_times[label][name] = time.perf_counter() - start

            body.__name__ = getattr(function, "__name__", name)
            return runner(name, body, *args, **kwargs)

        return run_stage

    def direct(name, function, *args, **kwargs):
        return function(*args, **kwargs)

    @flow(name="training-bench", validate_parameters=False)
    def bench_flow(params, label):
        from conveyor.registry.workspace import Workspace

        return run_training(Workspace.from_params(params), data, runner=timed(label, as_task))

    totals = {}
    run_training(workspace(work / "warmup"), data)  # imports, caches: not measured
    for label, call in (
        ("direct", lambda: run_training(workspace(work / "direct"), data, runner=timed("direct", direct))),
        ("flow (cold)", lambda: bench_flow(workspace(work / "cold").params(), "flow (cold)")),
        ("flow (warm)", lambda: bench_flow(workspace(work / "warm").params(), "flow (warm)")),
    ):
        start = time.perf_counter()
        call()
        totals[label] = time.perf_counter() - start

    stages = list(stage_times["direct"])
    labels = list(totals)
    print(f"{'stage':12s}" + "".join(f"{label:>14s}" for label in labels))
    for stage in stages:
        print(f"{stage:12s}" + "".join(f"{stage_times[label].get(stage, float('nan')):13.2f}s" for label in labels))
    print(f"{'total':12s}" + "".join(f"{totals[label]:13.2f}s" for label in labels))
    for label in labels[1:]:
        print(f"ratio {label} / direct: {totals[label] / totals['direct']:.2f}   (goal <= 1.5)")


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    main()
