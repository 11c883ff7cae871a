"""The model service under load, against its baselines measured in the same run:

  - in-process: the same model's predict_proba on one-row frames, called in a loop;
  - bare BentoML: a BentoML service with the same model and nothing else (bench/bare_service.py);
  - Conveyor: `conveyor serve` (verified champion, router, auth, metrics, inference log).

Each: REQUESTS one-row requests at concurrency 16 (bounded in count), after a warm-up.
Then the canary: a canary that fails 5% of its requests, under the shipped policies/canary.yaml;
how many canary requests and how long until it is rolled back (bounded: 20,000 requests).

    .venv/bin/python bench/serving.py [--requests 2000]

Goals: Conveyor >= 0.9x bare BentoML throughput, p99 <= 1.2x bare, >= 0.5x in-process;
the 5%-error canary rolled back within 200 canary requests and 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
CONCURRENCY = 16


def train_project(work: Path) -> tuple[Path, dict[str, str]]:
    """A project with a champion and a 5%-error canary candidate, trained on 8,000 demo rows."""
    import yaml

    from conveyor.demo.data import DEMO_DATASETS, generate, write_csv
    from pipelines.training import run_training
    from registry.release import promote
    from registry.workspace import Workspace

    root, home = work / "project", work / "project" / ".conveyor"
    (root / "data").mkdir(parents=True)
    shutil.copytree(ROOT / "policies", root / "policies", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    write_csv(generate(DEMO_DATASETS["v1"]).head(8_000), root / "data" / "loans.csv")
    config = (ROOT / "conveyor.yaml").read_text()
    (root / "conveyor.yaml").write_text(config)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    request = Workspace.open(
        root, home=str(home), ledger_url=f"sqlite:///{home / 'ledger.db'}", mlflow_tracking_uri=uri, actor="bench"
    )
    versions = {"champion": run_training(request).version}
    assert promote(request, f"loan-default/{versions['champion']}", "champion").decision.ok
    project = yaml.safe_load(config)
    project["estimator"] = {"class": "tests.faults.FaultyClassifier", "params": {"fault": "raise", "rate": 0.05}}
    (root / "conveyor.yaml").write_text(yaml.safe_dump(project))
    versions["canary"] = run_training(request).version
    (root / "conveyor.yaml").write_text(config)
    return root, versions


def rows_of(root: Path, n: int = 500) -> list[dict]:
    import math

    import pandas as pd
    import yaml

    features = yaml.safe_load((root / "conveyor.yaml").read_text())["features"]
    frame = pd.read_csv(root / "data" / "loans.csv", nrows=n)[features["numeric"] + features["categorical"]]
    return [
        {
            k: None if isinstance(v, float) and math.isnan(v) else float(v) if isinstance(v, int | float) else v
            for k, v in row.items()
        }
        for row in frame.to_dict("records")
    ]


def load(url: str, token: str | None, rows: list[dict], requests: int) -> dict[str, float]:
    """``requests`` one-row POSTs at CONCURRENCY; throughput and latency percentiles."""
    import httpx

    async def run() -> tuple[float, list[float], int]:
        latencies: list[float] = []
        failures = 0
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers=headers) as client:
            queue = iter(range(requests))

            async def worker() -> None:
                nonlocal failures
                for i in queue:
                    started = time.perf_counter()
                    response = await client.post("/predict", json={"rows": [rows[i % len(rows)]]})
                    latencies.append(time.perf_counter() - started)
                    failures += response.status_code != 200

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            return time.perf_counter() - started, latencies, failures

    elapsed, latencies, failures = asyncio.run(run())
    cuts = statistics.quantiles(latencies, n=100)
    return {"rps": requests / elapsed, "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000, "failures": failures}


def in_process(model_dir: Path, rows: list[dict], requests: int) -> dict[str, float]:
    import mlflow.sklearn
    import pandas as pd

    model = mlflow.sklearn.load_model(str(model_dir))
    frames = [pd.DataFrame([row]) for row in rows]
    for frame in frames[:50]:
        model.predict_proba(frame)
    latencies = []
    started = time.perf_counter()
    for i in range(requests):
        t = time.perf_counter()
        model.predict_proba(frames[i % len(frames)])
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {"rps": requests / elapsed, "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000, "failures": 0}


def serve(command: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    import httpx

    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop(process)
    raise RuntimeError(f"not ready: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def canary_rollback(url: str, token: str, admin: str, rows: list[dict], client, version: str) -> dict[str, float]:
    """Requests until the 5%-error canary is rolled back under the shipped canary policy."""
    import httpx

    client.set_registered_model_alias("loan-default", "canary", version)
    httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {admin}"}, timeout=120).raise_for_status()
    started, sent = time.perf_counter(), 0
    while sent < 20_000 and time.perf_counter() - started < 300:
        result = load(url, token, rows, 200)
        sent += 200
        assert result["failures"] == 0, "a client saw an error"
        status = httpx.get(f"{url}/admin/status", headers={"Authorization": f"Bearer {admin}"}).json()
        if status["canary"] is None:
            break
    elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed,
        "requests": sent,
        "state": status["analysis"]["state"],
        "canary_requests": status["analysis"]["canary_requests"],
        "reasons": status["analysis"]["last_verdict"]["reasons"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-serving-"))
    os.environ["CONVEYOR_HOME"] = str(work / "project" / ".conveyor")
    from registry.workspace import Workspace, quiet_libraries
    from tests.service import free_port

    Workspace.open(work / "project" / "conveyor.yaml").prepare()
    quiet_libraries()
    processes: list[subprocess.Popen] = []
    try:
        print("training a champion and a 5%-error canary (8,000 demo rows)...", flush=True)
        root, versions = train_project(work)
        home = root / ".conveyor"
        from mlflow import MlflowClient

        from registry.models import fetch_model
        from serving.auth import ApiKeys

        client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
        model_dir = fetch_model(f"models:/loan-default/{versions['champion']}", work / "model")
        keys = ApiKeys(home / "serving" / "api-keys.json")
        token = keys.create("bench", per_second=1_000_000, burst=1_000_000)  # measure the service, not its limit
        admin = keys.create("bench-admin", admin=True)
        rows = rows_of(root)
        results: dict[str, dict] = {"in-process": in_process(model_dir, rows, args.requests)}
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), BENCH_MODEL_DIR=str(model_dir), CONVEYOR_TEST_FAULTS="1")

        port = free_port()
        bare = serve(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                "bench.bare_service:Bare",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env,
            port,
            work / "bare.log",
        )
        processes.append(bare)
        load(f"http://127.0.0.1:{port}", None, rows, 200)  # warm-up
        results["bare BentoML"] = load(f"http://127.0.0.1:{port}", None, rows, args.requests)
        stop(bare)

        port = free_port()
        ours = serve(
            [sys.executable, "-m", "conveyor", "--config", str(root / "conveyor.yaml"), "serve", "--port", str(port)],
            env,
            port,
            work / "conveyor.log",
        )
        processes.append(ours)
        url = f"http://127.0.0.1:{port}"
        load(url, token, rows, 200)  # warm-up
        results["Conveyor"] = load(url, token, rows, args.requests)
        canary = canary_rollback(url, token, admin, rows, client, versions["canary"])
        stop(ours)

        base, bare_r = results["in-process"], results["bare BentoML"]
        print(f"\n{args.requests:,} one-row requests at concurrency {CONCURRENCY} (after a warm-up)")
        print(
            f"{'':14s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'vs bare (rps, p99)':>20s} {'vs in-process':>14s}"
        )
        for name, r in results.items():
            print(
                f"{name:14s} {r['rps']:8.0f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
                f"{r['rps'] / bare_r['rps']:9.2f}x {r['p99_ms'] / bare_r['p99_ms']:8.2f}x {r['rps'] / base['rps']:13.2f}x"
                f"{'  (' + str(r['failures']) + ' failed)' if r['failures'] else ''}"
            )
        print(
            f"\n5%-error canary under policies/canary.yaml: {canary['state']} after {canary['canary_requests']} canary "
            f"requests ({canary['requests']:,} in all, 0 client errors) in {canary['seconds']:.1f} s"
        )
        print(f"  verdict: {'; '.join(canary['reasons'])}")
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
