"""The whole tabular loop in the server profile, as its users run it: train on the worker, promote,
serve two replicas, drifted traffic through both, labels, a drift check whose event starts the
retraining on the worker, the replicas picking the new canary up from the MLflow server, the
canary's analysis over both replicas' traffic, and its verdict. Every store is then read in its
server: runs in the MLflow server, objects in the bucket, events in PostgreSQL, features and the
shared state in Redis."""

from __future__ import annotations

import collections
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import POLICY_CODE, REPO, postgres_database
from tests.servers.test_server_profile import conveyor, rename_model
from tests.service import Service, drive

pytestmark = pytest.mark.slow
WINDOW = 2_000  # drifted requests: the drift check's window, and the labels that arrive for them


def _project(base: Path, name: str, small_loans: Path) -> Path:
    root = base / "project"
    (root / "data").mkdir(parents=True)
    shutil.copy(REPO / "conveyor.yaml", root / "conveyor.yaml")
    shutil.copytree(REPO / "policies", root / "policies", ignore=POLICY_CODE)
    rename_model(root, name)
    shutil.copy(small_loans, root / "data" / "loans.csv")
    canary = yaml.safe_load((root / "policies" / "canary.yaml").read_text())
    canary.update(steps=[50, 100], min_requests=150, min_seconds=2, analysis_seconds=0.5)  # a test's pace
    (root / "policies" / "canary.yaml").write_text(yaml.safe_dump(canary))
    serving = yaml.safe_load((root / "policies" / "serving.yaml").read_text())
    serving.update(watch_seconds=1, rate_limit={"per_second": 100_000, "burst": 100_000})
    (root / "policies" / "serving.yaml").write_text(yaml.safe_dump(serving))
    return root


def _events(ledger_url: str, *kinds: str) -> list:
    from conveyor.registry.ledger import Ledger

    with Ledger(ledger_url) as ledger:
        return [e for e in ledger.iter_events() if e.kind in kinds]


def _until(what, seconds: float, message) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, message() if callable(message) else message
        time.sleep(0.25)


def test_the_whole_loop_runs_on_the_servers(
    servers: dict[str, str], tmp_path: Path, small_loans: Path, demo_files: dict[str, Path]
) -> None:
    import boto3
    import redis
    from mlflow import MlflowClient

    from conveyor.demo.loop import _rows
    from conveyor.policies.project import load_project
    from conveyor.registry.inference_log import read_log
    from conveyor.serving.auth import ApiKeys

    name = f"loan-default-{uuid.uuid4().hex[:8]}"  # the MLflow server's registry outlives a test
    root = _project(tmp_path, name, small_loans)
    drifted = tmp_path / "drifted.csv"
    pd.read_csv(demo_files["drift"]).head(WINDOW).to_csv(drifted, index=False)
    mlflow = MlflowClient(tracking_uri=servers["CONVEYOR_MLFLOW_TRACKING_URI"])
    with postgres_database("loop") as ledger_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PREFECT_", "MLFLOW_"))}
        env.update(servers, CONVEYOR_LEDGER_URL=ledger_url, CONVEYOR_HOME=str(root / ".conveyor"))

        def run(*args: str, timeout: float = 300):
            done = conveyor(root, env, *args, timeout=timeout)
            return done, (done.stdout + done.stderr)[-4000:]

        done, said = run("deploy")
        assert done.returncode == 0, said
        done, said = run("train", "--json", timeout=600)
        assert done.returncode == 0, said
        champion = json.loads(done.stdout)["version"]
        done, said = run("promote", f"{name}/{champion}", "--to", "champion")
        assert done.returncode == 0, said

        keys = ApiKeys(root / ".conveyor" / "serving" / "api-keys.json")
        admin, client = keys.create("ops", admin=True), keys.create("app")
        replicas = [Service(root / "conveyor.yaml", env=env) for _ in range(2)]
        try:
            for replica in replicas:
                replica.start()

            def status(i: int) -> dict:
                response = replicas[i].admin("GET", "status", admin)
                assert response.status_code == 200, response.text
                return response.json()

            # Drifted traffic, half through each replica; monitoring reads both replicas' partitions.
            rows = _rows(drifted, load_project(root / "conveyor.yaml", check_data=False), WINDOW)
            half = WINDOW // 2
            replies = drive(replicas[0].url, client, rows[:half], requests=half)
            replies += drive(replicas[1].url, client, rows[half:], requests=WINDOW - half)
            assert collections.Counter(r.status for r in replies) == {200: WINDOW}
            folder = root / ".conveyor" / "inference" / name
            _until(lambda: len(read_log(folder)) >= WINDOW, 30, "the replicas' answers did not all reach the log")
            assert len({p.parent for p in folder.rglob("*.parquet")}) >= 2, sorted(folder.rglob("*"))

            done, said = run("labels", "add", str(drifted), "--no-retrain")
            assert done.returncode in (0, 1), said  # 1: the labels show a quality breach too
            done, said = run("drift", "check", "--window", str(WINDOW))
            assert done.returncode == 1 and "retraining requested from the Prefect server" in done.stdout, said

            # The event starts the retraining deployment; the pool's worker runs it.
            _until(
                lambda: _events(ledger_url, "retraining.completed", "retraining.failed"),
                420,
                "the retraining did not end on the worker (see the servers' prefect folder)",
            )
            completed = _events(ledger_url, "retraining.completed")
            assert completed, [e.details for e in _events(ledger_url, "retraining.failed")]
            trigger = _events(ledger_url, "retraining.triggered")[-1]
            assert trigger.outputs[0] in completed[0].inputs
            retrained = str(completed[0].details["version"])
            assert completed[0].details["canary"], completed[0].details
            assert mlflow.get_model_version_by_alias(name, "canary").version == retrained

            # Both replicas load the canary from the registry; one analysis counts both's traffic.
            _until(
                lambda: all((status(i)["canary"] or {}).get("version") == retrained for i in (0, 1)),
                60,
                lambda: f"a replica did not load the canary: {[status(i)['canary'] for i in (0, 1)]}",
            )

            def verdict() -> bool:
                return bool(_events(ledger_url, "model.canary_completed", "model.canary_rolled_back"))

            spread = [f"applicant-{i}" for i in range(200)]
            for _ in range(30):  # bounded: at most 30 rounds of 400 requests
                for replica in replicas:
                    drive(replica.url, client, rows, requests=200, keys=spread)
                if verdict():
                    break
            ended = _events(ledger_url, "model.canary_completed", "model.canary_rolled_back")
            assert ended and ended[0].kind == "model.canary_completed", [e.details for e in ended] or status(0)[
                "analysis"
            ]
            assert ended[0].details["promoted"], ended[0].details
            figures = ended[0].details["figures"]
            assert len(figures["canary_requests_by_worker"]) == 2, figures  # both replicas' traffic counted
            assert mlflow.get_model_version_by_alias(name, "champion").version == retrained
            _until(
                lambda: all((status(i)["champion"] or {}).get("version") == retrained for i in (0, 1)),
                30,
                lambda: f"a replica still serves the old champion: {[status(i)['champion'] for i in (0, 1)]}",
            )
        finally:
            for replica in replicas:
                replica.stop()

        # The ledger in PostgreSQL: the whole loop, and the audit of the new champion passes.
        kinds = collections.Counter(e.kind for e in _events(ledger_url, *_LOOP))
        assert set(kinds) == set(_LOOP), kinds
        audit = conveyor(root, env, "audit", f"{name}/{retrained}")
        assert audit.returncode == 0, audit.stdout + audit.stderr

    # MLflow server: the retraining's run names its cause; its artifacts are objects in the bucket.
    run = mlflow.get_run(str(mlflow.get_model_version(name, retrained).run_id))
    s3 = boto3.client(
        "s3",
        endpoint_url=servers["CONVEYOR_OBJECT_STORE_URL"],
        aws_access_key_id=servers["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=servers["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    assert run.data.tags.get("conveyor.cause") == trigger.outputs[0], run.data.tags
    assert _has_run_objects(s3, servers["CONVEYOR_BUCKET"], run.info.run_id)
    # Redis: the service's shared state under its run (the model's name), beside Feast's features.
    online = redis.Redis.from_url(servers["CONVEYOR_REDIS_URL"])
    try:
        assert any(name in key.decode() for key in online.scan_iter(count=1000)), "no shared state for the service"
        assert online.dbsize() > 100
    finally:
        online.close()


_LOOP = (
    "model.trained",
    "model.registered",
    "model.promoted",
    "model.deployed",
    "drift.checked",
    "labels.added",
    "retraining.triggered",
    "retraining.completed",
    "model.canary_completed",
)


def _has_run_objects(s3, bucket: str, run_id: str) -> bool:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="mlflow/")
    return any(run_id in o["Key"] for page in pages for o in page.get("Contents", []))
