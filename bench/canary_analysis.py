"""Canary analysis against noise: how often a healthy canary is rolled back, and how fast a slow one is.

Real models in real child processes (``serving.models.ModelProcess``, as the service runs them):
the champion, a healthy canary (the same estimator retrained) and a slow canary (the same, 30 ms
slower a call). Each trial sends one-row requests at concurrency 16, 20 % to the canary, and
records what the service records per request (the model's wall and CPU time, its prediction). The same
streams are judged, at the same points (every 50 canary requests), by

  - the old analysis: p95 wall-clock latency ratio > 1.5 or PSI > 0.2 at one look rolls back;
  - the new one (``policies.canary.judge_canary`` with the shipped policies/canary.yaml), on the
    model's CPU time per call: a Mann-Whitney U test with an effect size, a median ratio and an absolute slack, against the
    champion's times for the same rows (a quarter of the canary's calls, timed on the champion as
    the engine does), a KS test for predictions, and a breach must last ``breach_limit`` analyses.

Trials run idle and beside a neighbour process burning a core (the shared machine). Bounded:
TRIALS trials a case, REQUESTS requests a trial.

    .venv/bin/python bench/canary_analysis.py [--trials 8] [--requests 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
CONCURRENCY, CANARY_SHARE, LOOK_EVERY, PAIRED_SHARE = 16, 0.2, 50, 0.25


def train(work: Path) -> dict[str, Path]:
    """Champion, healthy and slow canaries on 8,000 demo rows; their verified-model folders."""
    import yaml

    from conveyor.demo.data import DEMO_DATASETS, generate, write_csv
    from conveyor.pipelines.training import run_training
    from conveyor.registry.models import fetch_model
    from conveyor.registry.workspace import Workspace

    root, home = work / "project", work / "project" / ".conveyor"
    (root / "data").mkdir(parents=True)
    shutil.copytree(ROOT / "policies", root / "policies", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    write_csv(generate(DEMO_DATASETS["v1"]).head(8_000), root / "data" / "loans.csv")
    config = yaml.safe_load((ROOT / "conveyor.yaml").read_text())
    ws = Workspace.open(root, home=str(home), actor="bench")
    folders = {}
    for name, estimator in (
        ("champion", None),
        ("healthy", None),
        ("slow", {"class": "tests.faults.FaultyClassifier", "params": {"fault": "slow", "delay": 0.03}}),
    ):
        project = dict(config)
        if estimator:
            project["estimator"] = estimator
        (root / "conveyor.yaml").write_text(yaml.safe_dump(project))
        version = run_training(ws).version
        folders[name] = fetch_model(f"models:/loan-default/{version}", work / name)
    return folders


def model(folder: Path):
    import yaml

    from conveyor.serving.contract import InputContract
    from conveyor.serving.models import ModelProcess, VerifiedModel
    from conveyor.serving.schema import columns_from_mlmodel

    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    verified = VerifiedModel(
        "loan-default",
        folder.name,
        folder,
        "sha256:bench",
        "bench",
        tuple(columns_from_mlmodel(mlmodel)),
        "classification",
        InputContract.from_metadata(mlmodel.get("metadata")),
    )
    process = ModelProcess(verified)
    process.wait_loaded()
    return process


async def trial(champion, canary, rows: list[dict], requests: int, seed: int) -> list[tuple[str, float, float]]:
    """(role, model ms, prediction) per request, in the order they were answered."""
    rng = random.Random(seed)
    stream: list[tuple[str, float, float]] = []
    todo = iter(range(requests))

    paired: list[asyncio.Task] = []

    async def pair(batch: list[dict]) -> None:  # as the engine does: the canary's rows timed on the champion
        stream.append(("paired", await champion.time_call(batch), float("nan")))

    async def worker() -> None:
        for i in todo:
            role, target = ("canary", canary) if rng.random() < CANARY_SHARE else ("champion", champion)
            batch = [rows[(i * 7 + seed) % len(rows)]]
            answer = await target.predict(batch)
            stream.append((role, answer.cpu_ms, float(answer.values[0])))
            stream.append(("wall-" + role, answer.model_ms, float(answer.values[0])))
            if role == "canary" and rng.random() < PAIRED_SHARE:
                paired.append(asyncio.get_running_loop().create_task(pair(batch)))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    await asyncio.gather(*paired)
    return stream


def old_verdict(canary: list[tuple[float, float]], champion: list[tuple[float, float]]) -> bool:
    """The analysis before: one look at the p95 ratio (max 1.5) and the PSI (max 0.2); True = rollback."""
    from conveyor.policies.canary import psi

    ours, theirs = np.percentile([c[0] for c in canary], 95), np.percentile([c[0] for c in champion], 95)
    bins = min(10, len(canary) // 30, len(champion) // 30)
    shift = psi([c[1] for c in champion], [c[1] for c in canary], bins=bins) if bins >= 2 else 0.0
    return ours / max(theirs, 1e-9) > 1.5 or shift > 0.2


def judge(stream: list[tuple[str, float, float]], policy) -> dict[str, int | None]:
    """The first canary request count at which each analysis rolls back (None: never)."""
    from conveyor.policies.canary import CanaryStats, Side, judge_canary

    canary: list[tuple[float, float]] = []
    champion: list[tuple[float, float]] = []
    paired: list[float] = []
    wall: dict[str, list[tuple[float, float]]] = {"canary": [], "champion": []}  # what the old analysis judged
    decided: dict[str, int | None] = {"old": None, "new": None}
    in_a_row = 0
    for role, ms, prediction in stream:
        if role == "paired":
            paired.append(ms)
            continue
        if role.startswith("wall-"):
            wall[role[5:]].append((ms, prediction))
            continue
        (canary if role == "canary" else champion).append((ms, prediction))
        if role != "canary" or len(canary) % LOOK_EVERY or len(canary) < policy.min_requests:
            continue
        if decided["old"] is None and old_verdict(wall["canary"], wall["champion"]):
            decided["old"] = len(canary)
        if decided["new"] is None:
            sides = [Side(len(s), 0, [x[0] for x in s], [x[1] for x in s]) for s in (canary, champion)]
            if len(paired) >= policy.latency.min_samples:  # the same work timed on the champion, as the service does
                sides[1] = Side(sides[1].requests, 0, list(paired), sides[1].predictions)
            verdict = judge_canary(CanaryStats(0, 1e9, sides[0], sides[1], in_a_row), policy)
            in_a_row = in_a_row + 1 if verdict.breached else 0
            if verdict.action == "rollback":
                decided["new"] = len(canary)
                decided["why"] = "; ".join(verdict.reasons)
    return decided


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1_500)
    args = parser.parse_args()
    from conveyor.policies.canary import CanaryPolicy
    from conveyor.policies.loading import load_policy
    from conveyor.registry.workspace import quiet_libraries

    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-canary-"))
    os.environ["CONVEYOR_HOME"] = str(work / "project" / ".conveyor")
    os.environ["CONVEYOR_TEST_FAULTS"] = "1"  # the slow canary is slow
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    quiet_libraries()
    policy = load_policy(ROOT / "policies" / "canary.yaml", CanaryPolicy)
    policy = policy.model_copy(update={"min_requests": 100})  # as the replay looks every 50 canary requests
    processes = []
    neighbour = None
    try:
        print("training a champion, a healthy and a slow canary (8,000 demo rows)...", flush=True)
        folders = train(work)
        import pandas as pd
        import yaml

        features = yaml.safe_load((ROOT / "conveyor.yaml").read_text())["features"]
        frame = pd.read_csv(work / "project" / "data" / "loans.csv", nrows=500)
        rows = [
            {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame[features["numeric"] + features["categorical"]].to_dict("records")
        ]
        rows = [{k: float(v) if isinstance(v, int | float) else v for k, v in row.items()} for row in rows]
        champion = model(folders["champion"])
        canaries = {"healthy": model(folders["healthy"]), "slow": model(folders["slow"])}
        processes = [champion, *canaries.values()]
        results: dict[tuple[str, str], list[dict]] = {}

        async def run_all() -> None:
            nonlocal neighbour
            await trial(champion, canaries["healthy"], rows, 300, 0)  # warm-up
            for load in ("idle", "busy"):
                if load == "busy":
                    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for kind, canary in canaries.items():
                    results[(kind, load)] = [
                        judge(await trial(champion, canary, rows, args.requests, seed), policy)
                        for seed in range(args.trials)
                    ]

        started = time.perf_counter()
        asyncio.run(run_all())
        elapsed = time.perf_counter() - started
        print(f"\n{args.trials} trials a case, {args.requests:,} requests each, 20 % to the canary ({elapsed:.0f} s)")
        print(
            f"{'canary':8s} {'machine':8s} {'old: rolled back':>17s} {'new: rolled back':>17s} {'canary requests to detect (old / new)':>40s}"
        )
        for (kind, load), outcomes in results.items():
            old = [o["old"] for o in outcomes]
            new = [o["new"] for o in outcomes]

            def share(found: list) -> str:
                return f"{sum(x is not None for x in found)}/{len(found)}"

            def median(found: list) -> str:
                hits = [x for x in found if x is not None]
                return f"{int(np.median(hits))}" if hits else "-"

            detect = f"{median(old)} / {median(new)}" if kind == "slow" else ""
            print(f"{kind:8s} {load:8s} {share(old):>17s} {share(new):>17s} {detect:>40s}")
        print("\nhealthy rolled back = false alarms (want 0); slow rolled back = detections (want all).")
        for (kind, load), outcomes in results.items():
            for outcome in outcomes:
                if kind == "healthy" and outcome.get("why"):
                    print(f"  false alarm ({load}): {outcome['why']}")
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
        for process in processes:
            process.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
