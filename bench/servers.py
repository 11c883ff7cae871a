"""The server profile against the embedded one, measured in the same run on this machine:

  - training: `conveyor train` on 8,000 demo rows, embedded (every store a file, stages in the
    command's process) vs the server profile (a flow run on the Prefect worker, MLflow server,
    PostgreSQL ledger, Feast on Redis, artifacts in the object store); alternated, medians, ratio;
  - serving: one-row predictions at concurrency 16, one replica vs two replicas (two `conveyor
    serve` processes sharing the canary's state in Redis; the client spreads its connections over
    both, as a load balancer would), against one replica measured in the same run;
  - the canary's rollback across replicas: an abort on one replica until neither serves the canary;
  - a key's revocation across replicas: revoked in Redis until both replicas refuse it.

Needs the servers (they start on 127.0.0.1 and stop afterwards):

    bash scripts/with-servers.sh .venv/bin/python bench/servers.py [--requests 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONVEYOR = str(Path(sys.executable).with_name("conveyor"))


def project(work: Path, name: str) -> Path:
    from conveyor.demo.data import DEMO_DATASETS, generate, write_csv

    root = work / name
    (root / "data").mkdir(parents=True)
    shutil.copytree(ROOT / "policies", root / "policies", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    from tests.servers.test_server_profile import rename_model

    shutil.copy(ROOT / "conveyor.yaml", root / "conveyor.yaml")
    rename_model(root, f"loan-default-{uuid.uuid4().hex[:8]}")  # the MLflow server's registry outlives a run
    write_csv(generate(DEMO_DATASETS["v1"]).head(8_000), root / "data" / "loans.csv")
    import yaml

    serving = yaml.safe_load((root / "policies" / "serving.yaml").read_text())
    serving["rate_limit"] = {"per_second": 100_000, "burst": 100_000}  # the load, not the limiter, is measured
    (root / "policies" / "serving.yaml").write_text(yaml.safe_dump(serving))
    return root


def environment(root: Path, servers: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PREFECT_", "MLFLOW_"))}
    if servers:
        env.update({k: v for k, v in os.environ.items() if k.startswith("CONVEYOR_")})
    env["CONVEYOR_HOME"] = str(root / ".conveyor")
    return env


def timed_train(root: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([CONVEYOR, "train", "--json"], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"training failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def load(urls: list[str], token: str, rows: list[dict], requests: int, concurrency: int = 16) -> dict[str, float]:
    import httpx

    async def run() -> tuple[float, list[float]]:
        latencies: list[float] = []
        clients = [
            httpx.AsyncClient(base_url=u, timeout=60, headers={"Authorization": f"Bearer {token}"}) for u in urls
        ]
        counter = iter(range(requests))

        async def worker(w: int) -> None:
            client = clients[w % len(clients)]  # each connection stays on one replica
            for i in counter:
                started = time.perf_counter()
                response = await client.post("/predict", json={"rows": [rows[i % len(rows)]]})
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        took = time.perf_counter() - started
        for client in clients:
            await client.aclose()
        return took, latencies

    took, latencies = asyncio.run(run())
    latencies.sort()
    return {
        "rps": requests / took,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def answer(url: str, token: str, row: dict) -> int:
    import httpx

    sent = {"rows": [row]}
    return httpx.post(f"{url}/predict", json=sent, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.environ.get("CONVEYOR_PROFILE") != "servers":
        raise SystemExit("run it with the servers: bash scripts/with-servers.sh .venv/bin/python bench/servers.py")
    from mlflow import MlflowClient

    from conveyor.demo.service import LocalService
    from conveyor.serving.auth import ApiKeys
    from tests.integration.test_serving import _rows

    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-servers-"))
    try:
        embedded, servers = project(work, "embedded"), project(work, "servers")
        server_env = environment(servers, True)
        subprocess.run([CONVEYOR, "deploy"], cwd=servers, env=server_env, check=True, capture_output=True)
        times: dict[str, list[float]] = {"embedded": [], "servers": []}
        for _ in range(args.rounds):  # alternated: the machine's noise falls on both
            times["embedded"].append(timed_train(embedded, environment(embedded, False)))
            times["servers"].append(timed_train(servers, server_env))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"training, 8,000 rows, median of {args.rounds}: embedded {med['embedded']:.1f} s, "
            f"server profile {med['servers']:.1f} s (ratio {med['servers'] / med['embedded']:.2f}x)"
        )

        model = next(
            line.split(": ", 1)[1]
            for line in (servers / "conveyor.yaml").read_text().splitlines()
            if line.startswith("model_name")
        )
        registry = MlflowClient(tracking_uri=server_env["CONVEYOR_MLFLOW_TRACKING_URI"])
        versions = sorted(int(v.version) for v in registry.search_model_versions(f"name='{model}'"))
        subprocess.run(
            [CONVEYOR, "promote", f"{model}/{versions[0]}", "--to", "champion"],
            cwd=servers,
            env=server_env,
            check=True,
            capture_output=True,
        )
        keys = ApiKeys(servers / ".conveyor" / "serving" / "api-keys.json")
        token, admin = keys.create("bench"), keys.create("ops", admin=True)
        import yaml

        features = yaml.safe_load((servers / "conveyor.yaml").read_text())["features"]
        rows = _rows(servers / "data" / "loans.csv", [*features["numeric"], *features["categorical"]])
        replicas = [LocalService(servers / "conveyor.yaml", env=server_env) for _ in range(2)]
        try:
            for replica in replicas:
                replica.start()
            load([replicas[0].url], token, rows, 300)  # warm-up
            load([r.url for r in replicas], token, rows, 300)
            one, two = [], []
            for _ in range(args.rounds):
                one.append(load([replicas[0].url], token, rows, args.requests))
                two.append(load([r.url for r in replicas], token, rows, args.requests))
            rps1 = statistics.median(r["rps"] for r in one)
            rps2 = statistics.median(r["rps"] for r in two)
            p99 = (statistics.median(r["p99_ms"] for r in one), statistics.median(r["p99_ms"] for r in two))
            print(
                f"serving, {args.requests} one-row requests at concurrency 16: 1 replica {rps1:.0f} req/s "
                f"(p99 {p99[0]:.0f} ms), 2 replicas {rps2:.0f} req/s (p99 {p99[1]:.0f} ms): {rps2 / rps1:.2f}x"
            )

            took = []
            for _ in range(5):
                registry.set_registered_model_alias(model, "canary", str(versions[-1]))
                replicas[0].admin("POST", "reload", admin)
                deadline = time.monotonic() + 60
                while not all(r.admin("GET", "status", admin).json()["canary"] for r in replicas):
                    if time.monotonic() > deadline:
                        raise SystemExit("a replica never loaded the canary")
                    time.sleep(0.05)
                started = time.monotonic()
                replicas[1].admin("POST", "abort", admin, {"reason": "bench"})
                while any(r.admin("GET", "status", admin).json()["canary"] for r in replicas):
                    time.sleep(0.01)
                took.append((time.monotonic() - started) * 1000)
            print(
                f"rollback across 2 replicas (abort on one until neither serves the canary), 5 times: "
                f"median {statistics.median(took):.0f} ms, max {max(took):.0f} ms"
            )

            from conveyor.registry.workspace import Workspace
            from conveyor.serving.auth import open_api_keys

            shared = open_api_keys(Workspace.open(servers / "conveyor.yaml", home=str(servers / ".conveyor")))
            gone = []
            for _ in range(5):
                visitor = shared.create("visitor")
                while not all(answer(r.url, visitor, rows[0]) == 200 for r in replicas):
                    time.sleep(0.01)
                started = time.monotonic()
                shared.revoke("visitor")
                while any(answer(r.url, visitor, rows[0]) != 401 for r in replicas):
                    time.sleep(0.01)
                gone.append((time.monotonic() - started) * 1000)
            print(
                f"a key revoked (in Redis) until both replicas refuse it, 5 times: "
                f"median {statistics.median(gone):.0f} ms, max {max(gone):.0f} ms"
            )
        finally:
            for replica in replicas:
                replica.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
