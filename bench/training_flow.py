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


def request(home: Path, data: Path):
    from pipelines.training import TrainingRequest

    return TrainingRequest(
        config_file=str(ROOT / "conveyor.yaml"), root=str(ROOT), home=str(home), data=str(data),
        ledger_url=f"sqlite:///{home / 'ledger.db'}", mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        actor="bench",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "loans.csv")
    parser.add_argument("--cli", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    os.environ["CONVEYOR_HOME"] = str(work / "cli")
    from conveyor.bootstrap import bootstrap, quiet_libraries
    from conveyor.settings import configure

    bootstrap(configure(project_file=ROOT / "conveyor.yaml"))
    quiet_libraries()
    try:
        if args.cli:
            start = time.perf_counter()
            subprocess.run([str(ROOT / ".venv" / "bin" / "conveyor"), "train", "--data", str(args.data)],
                           check=True, capture_output=True, env=os.environ)  # fmt: skip
            print(f"`conveyor train` as a user runs it (fresh process): {time.perf_counter() - start:6.1f} s")
        run(work, args.data)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, data: Path) -> None:
    from prefect import flow

    from pipelines.training import as_task, run_training

    stage_times: dict[str, dict[str, float]] = defaultdict(dict)

    def timed(label: str, runner):  # noqa: ANN001, ANN202
        def run_stage(name, function, *args, **kwargs):  # noqa: ANN001, ANN202
            def body(*a, **k):  # noqa: ANN002, ANN003, ANN202
                start = time.perf_counter()
                try:
                    return function(*a, **k)
                finally:
                    stage_times[label][name] = time.perf_counter() - start
            body.__name__ = getattr(function, "__name__", name)
            return runner(name, body, *args, **kwargs)
        return run_stage

    def direct(name, function, *args, **kwargs):  # noqa: ANN001, ANN202
        return function(*args, **kwargs)

    @flow(name="training-bench", validate_parameters=False)
    def bench_flow(req, label):  # noqa: ANN001, ANN202
        return run_training(req, timed(label, as_task))

    totals = {}
    run_training(request(work / "warmup", data))  # imports, caches: not measured
    for label, call in (
        ("direct", lambda: run_training(request(work / "direct", data), timed("direct", direct))),
        ("flow (cold)", lambda: bench_flow(request(work / "cold", data), "flow (cold)")),
        ("flow (warm)", lambda: bench_flow(request(work / "warm", data), "flow (warm)")),
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
