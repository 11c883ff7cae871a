"""The model service under load, against its baselines measured in the same run:

  - in-process: the same model's predict_proba on one-row frames, called in a loop;
  - bare BentoML, the fair peer: the same model in a BentoML service with adaptive batching on
    (``batchable=True``, max batch 512), the same worker count, nothing else (bench/bare_service.py);
  - Conveyor: `conveyor serve` (verified champion, gate with auth and limits, input and output
    contracts, router, metrics, inference log), and again with a healthy canary held at 20 %.

Each: REQUESTS one-row requests (bounded in count), after a warm-up, at concurrency 16 and 64,
with 1 and 2 workers. Then: time from `conveyor serve` to ready, cold (page cache dropped when
this machine allows it) and warm; and a canary that fails 5 % of its requests under the shipped
policies/canary.yaml (requests and seconds until it is rolled back; bounded: 20,000 requests).

    .venv/bin/python bench/serving.py [--requests 2000]

Goals: Conveyor >= 1.0x the fair peer's throughput and p99 <= 1.0x its p99; a canary costs
<= 10 %; ready in < 10 s; the 5 %-error canary rolled back within 200 canary requests.
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


def train_project(work: Path) -> tuple[Path, dict[str, str]]:
    """A project with a champion, a 5%-error canary candidate and a healthy one, trained on 8,000 demo rows."""
    import yaml

    from conveyor.demo.data import DEMO_DATASETS, generate, write_csv
    from conveyor.pipelines.training import run_training
    from conveyor.registry.release import promote
    from conveyor.registry.workspace import Workspace

    root, home = work / "project", work / "project" / ".conveyor"
    (root / "data").mkdir(parents=True)
    shutil.copytree(ROOT / "policies", root / "policies", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    signing_file = root / "policies" / "signing.yaml"
    signing = yaml.safe_load(signing_file.read_text())
    signing["loadable_types"] = ["numpy.*", "scipy.*", "sklearn.*", "tests.faults.*"]  # the 5%-error canary's class
    signing_file.write_text(yaml.safe_dump(signing))
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
    versions["healthy"] = run_training(request).version  # the champion's equal
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


def load(url: str, token: str | None, rows: list[dict], requests: int, concurrency: int = 16) -> dict[str, float]:
    """``requests`` one-row POSTs at ``concurrency``; throughput and latency percentiles.

    The client is aiohttp (one session, ``concurrency`` connections): httpx's pool was the
    bottleneck at concurrency 64 on this machine, for both services alike."""
    import aiohttp

    async def run() -> tuple[float, list[float], int]:
        latencies: list[float] = []
        failures = 0
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(
            base_url=url, connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
        ) as client:
            queue = iter(range(requests))

            async def worker() -> None:
                nonlocal failures
                for i in queue:
                    started = time.perf_counter()
                    async with client.post("/predict", json={"rows": [rows[i % len(rows)]]}) as response:
                        await response.read()
                        failures += response.status != 200
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
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


def serve(command: list[str], env: dict[str, str], port: int, log: Path) -> tuple[subprocess.Popen, float]:
    """The server started, and the seconds until every worker answered ``/readyz``."""
    import httpx

    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        try:
            if all(httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200 for _ in range(8)):
                return process, time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
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
        "version": status["analysis"].get("version"),
        "seconds": elapsed,
        "rps": sent / elapsed,
        "requests": sent,
        "state": status["analysis"]["state"],
        "canary_requests": status["analysis"]["canary_requests"],
        "reasons": status["analysis"]["last_verdict"]["reasons"],
    }


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only) so that the next start reads its files from disk."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def set_workers(root: Path, workers: int) -> None:
    import yaml

    path = root / "policies" / "serving.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["workers"] = workers
    path.write_text(yaml.safe_dump(policy))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-serving-"))
    os.environ["CONVEYOR_HOME"] = str(work / "project" / ".conveyor")
    from conveyor.registry.workspace import Workspace, quiet_libraries
    from tests.service import free_port

    Workspace.open(work / "project" / "conveyor.yaml").prepare()
    quiet_libraries()
    processes: list[subprocess.Popen] = []
    try:
        print("training a champion and a 5%-error canary (8,000 demo rows)...", flush=True)
        root, versions = train_project(work)
        home = root / ".conveyor"
        import httpx
        from mlflow import MlflowClient

        from conveyor.registry.models import fetch_model
        from conveyor.serving.auth import ApiKeys

        client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
        model_dir = fetch_model(f"models:/loan-default/{versions['champion']}", work / "model")
        keys = ApiKeys(home / "serving" / "api-keys.json")
        token = keys.create("bench", per_second=1_000_000, burst=1_000_000)  # measure the service, not its limit
        admin = keys.create("bench-admin", admin=True)
        rows = rows_of(root)
        base = in_process(model_dir, rows, args.requests)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(
            OMP_NUM_THREADS="1",
            PYTHONPATH=f"{ROOT / 'src'}:{ROOT}",
            BENCH_MODEL_DIR=str(model_dir),
            CONVEYOR_TEST_FAULTS="1",
        )
        ours_command = [sys.executable, "-m", "conveyor", "--config", str(root / "conveyor.yaml"), "serve", "--port"]
        bare_command = [sys.executable, "-m", "bentoml", "serve", "bench.bare_service:Bare", "--host", "127.0.0.1"]

        starts: dict[str, float] = {}
        dropped = drop_page_cache()
        for attempt in ("cold" if dropped else "first", "warm"):
            port = free_port()
            process, starts[attempt] = serve([*ours_command, str(port)], env, port, work / "start.log")
            processes.append(process)
            stop(process)

        results: dict[tuple[int, int], dict[str, dict]] = {}
        for workers in (1, 2):
            set_workers(root, workers)
            port = free_port()
            bare, _ = serve(
                [*bare_command, "--port", str(port)], {**env, "BENCH_WORKERS": str(workers)}, port, work / "bare.log"
            )
            processes.append(bare)
            load(f"http://127.0.0.1:{port}", None, rows, 300, 16)  # warm-up
            for concurrency in (16, 64):
                results[(workers, concurrency)] = {
                    "bare BentoML": load(f"http://127.0.0.1:{port}", None, rows, args.requests, concurrency)
                }
            stop(bare)
            port = free_port()
            ours, _ = serve([*ours_command, str(port)], env, port, work / "conveyor.log")
            processes.append(ours)
            url = f"http://127.0.0.1:{port}"
            load(url, token, rows, 300, 16)  # warm-up
            for concurrency in (16, 64):
                results[(workers, concurrency)]["Conveyor"] = load(url, token, rows, args.requests, concurrency)
            stop(ours)

        set_workers(root, 1)
        port = free_port()
        ours, _ = serve([*ours_command, str(port)], env, port, work / "conveyor.log")
        processes.append(ours)
        url = f"http://127.0.0.1:{port}"
        load(url, token, rows, 300, 16)
        # The canary's cost: with and without it, alternated (the machine's noise falls on both).
        auth = {"Authorization": f"Bearer {admin}"}
        client.set_registered_model_alias("loan-default", "canary", versions["healthy"])
        httpx.post(f"{url}/admin/reload", headers=auth, timeout=120).raise_for_status()
        runs: dict[str, list[dict]] = {"without": [], "with": []}
        for _ in range(3):
            for case, weight in (("without", 0), ("with", 20)):
                httpx.post(
                    f"{url}/admin/weight", json={"weight": weight, "hold": True}, headers=auth
                ).raise_for_status()
                load(url, token, rows, 200, 16)
                runs[case].append(load(url, token, rows, args.requests, 16))
        without = {k: statistics.median(r[k] for r in runs["without"]) for k in ("rps", "p99_ms")}
        with_canary = {k: statistics.median(r[k] for r in runs["with"]) for k in ("rps", "p99_ms")}
        httpx.post(f"{url}/admin/abort", json={"reason": "bench"}, headers=auth)
        canary = canary_rollback(url, token, admin, rows, client, versions["canary"])
        if canary["version"] != versions["canary"]:
            raise RuntimeError(f"the 5%-error canary was not the one analysed: {canary} (see {work / 'conveyor.log'})")
        stop(ours)

        print(f"\nin-process predict_proba, one-row frames: {base['rps']:.0f} calls/s (p99 {base['p99_ms']:.2f} ms)")
        print(f"\n{args.requests:,} one-row requests a run (after a warm-up); the peer: bare BentoML, batchable=True")
        print(
            f"{'workers':>7s} {'conc.':>5s} {'':13s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'vs peer (rps, p99)':>19s} {'vs in-process':>13s}"
        )
        for (workers, concurrency), runs in results.items():
            peer = runs["bare BentoML"]
            for name, r in runs.items():
                print(
                    f"{workers:7d} {concurrency:5d} {name:13s} {r['rps']:7.0f} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} "
                    f"{r['rps'] / peer['rps']:9.2f}x {r['p99_ms'] / peer['p99_ms']:7.2f}x {r['rps'] / base['rps']:12.2f}x"
                    f"{'  (' + str(r['failures']) + ' failed)' if r['failures'] else ''}"
                )
        print(
            "\ntime from `conveyor serve` to ready: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in starts.items())
            + ("" if dropped else " (page cache not dropped: not root)")
        )
        print(
            f"\n1 worker, concurrency 16, medians of 3 alternated runs: {without['rps']:.0f} req/s "
            f"(p99 {without['p99_ms']:.1f} ms) with the canary at 0 %, "
            f"{with_canary['rps']:.0f} req/s (p99 {with_canary['p99_ms']:.1f} ms) with a healthy canary held at 20 %: "
            f"{with_canary['rps'] / without['rps']:.2f}x"
        )
        print(
            f"5%-error canary under policies/canary.yaml: {canary['state']} after {canary['canary_requests']} canary "
            f"requests ({canary['requests']:,} in all, 0 client errors) in {canary['seconds']:.1f} s"
        )
        print(f"  verdict: {'; '.join(canary['reasons'])}")
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
