"""Two replicas of one service (two ``conveyor serve`` processes) in the server profile: one
registry (the MLflow server), one ledger (PostgreSQL), one shared state (a Redis of the test's
own, so that it can be restarted). The whole tabular loop runs through them (drift, retraining on
the worker, canary, verdict); a key revoked anywhere stops on both; the canary's analysis counts
both replicas' traffic, an alias change and an abort reach both, a replica killed mid-canary
leaves the other serving with the counts kept, and a Redis restart mid-traffic is no client's
error."""

from __future__ import annotations

import collections
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import postgres_database
from tests.servers.test_server_profile import conveyor, rename_model
from tests.servers.test_shared_state import RedisServer
from tests.service import Service, drive

pytestmark = pytest.mark.slow
NAME = f"loan-default-{uuid.uuid4().hex[:8]}"  # the MLflow server's registry outlives a test: a name of its own


@dataclass
class Fleet:
    env: dict[str, str]
    root: Path
    replicas: list[Service]
    versions: dict[str, str]
    admin_key: str
    client_key: str
    rows: list[dict]
    redis: RedisServer

    def status(self, replica: int) -> dict:
        response = self.replicas[replica].admin("GET", "status", self.admin_key)
        assert response.status_code == 200, response.text
        return response.json()

    def until(self, what, seconds: float, message: str) -> float:
        started = time.monotonic()
        while not what():
            assert time.monotonic() - started < seconds, message
            time.sleep(0.05)
        return time.monotonic() - started

    def drive_both(self, requests: int) -> list:
        replies = []
        for service in self.replicas:
            if service.process is not None and service.process.poll() is None:
                replies += drive(service.url, self.client_key, self.rows, requests=requests, concurrency=8)
        return replies


@pytest.fixture(scope="module")
def fleet(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory, small_loans: Path) -> Iterator[Fleet]:
    from mlflow import MlflowClient

    from conveyor.serving.auth import ApiKeys
    from tests.conftest import POLICY_CODE, REPO
    from tests.integration.test_serving import _rows

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    base = tmp_path_factory.mktemp("replicas")
    root = base / "project"
    (root / "data").mkdir(parents=True)
    shutil.copy(REPO / "conveyor.yaml", root / "conveyor.yaml")
    shutil.copytree(REPO / "policies", root / "policies", ignore=POLICY_CODE)
    rename_model(root, NAME)
    shutil.copy(small_loans, root / "data" / "loans.csv")
    canary = yaml.safe_load((root / "policies" / "canary.yaml").read_text())
    canary.update(steps=[50, 100], min_requests=150, min_seconds=2, analysis_seconds=0.5)  # a test's pace
    (root / "policies" / "canary.yaml").write_text(yaml.safe_dump(canary))
    serving = yaml.safe_load((root / "policies" / "serving.yaml").read_text())
    serving.update(watch_seconds=3600, canary_timeout_ms=2000, rate_limit={"per_second": 100_000, "burst": 100_000})
    (root / "policies" / "serving.yaml").write_text(yaml.safe_dump(serving))
    drift = yaml.safe_load((root / "policies" / "drift.yaml").read_text())
    drift["monitor"]["interval_seconds"] = 3600  # its scheduled drift check comes after these tests
    (root / "policies" / "drift.yaml").write_text(yaml.safe_dump(drift))
    redis = RedisServer(base)
    redis.start()
    with postgres_database("replicas") as ledger_url, _stopping(redis):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PREFECT_", "MLFLOW_"))}
        env.update(
            servers, CONVEYOR_LEDGER_URL=ledger_url, CONVEYOR_HOME=str(root / ".conveyor"), CONVEYOR_REDIS_URL=redis.url
        )
        doctor = conveyor(root, env, "doctor", "--json")
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        stores = {s["store"]: s for s in json.loads(doctor.stdout)["stores"]}
        assert all(s["ok"] for s in stores.values()) and "worker(s) online" in stores["flow runs (work pool)"]["detail"]
        deployed = conveyor(root, env, "deploy", "--json")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert {"training/conveyor", f"retraining/retraining-{NAME}"} <= set(json.loads(deployed.stdout)["deployments"])
        trained = conveyor(root, env, "train", "--json", timeout=600)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        versions = {"champion": json.loads(trained.stdout)["version"]}
        promoted = conveyor(root, env, "promote", f"{NAME}/{versions['champion']}", "--to", "champion")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        keys = ApiKeys(root / ".conveyor" / "serving" / "api-keys.json")
        admin_key, client_key = keys.create("ops", admin=True), keys.create("app")
        project = yaml.safe_load((root / "conveyor.yaml").read_text())
        columns = [*project["features"]["numeric"], *project["features"]["categorical"]]
        replicas = [Service(root / "conveyor.yaml", env=env) for _ in range(2)]
        try:
            for replica in replicas:
                replica.start()
            MlflowClient(tracking_uri=env["CONVEYOR_MLFLOW_TRACKING_URI"])  # reachable before the tests start
            yield Fleet(env, root, replicas, versions, admin_key, client_key, _rows(small_loans, columns), redis)
        finally:
            for replica in replicas:
                replica.stop()


@contextmanager
def _stopping(server: RedisServer) -> Iterator[None]:
    try:
        yield
    finally:
        server.stop()


def _make_canary(fleet: Fleet) -> None:
    """A canary that runs until the test ends it: held at 50 % (no step advances while held)."""
    from mlflow import MlflowClient

    if "canary" not in fleet.versions:  # the loop's test left the champion it replaced, or train one
        trained = conveyor(fleet.root, fleet.env, "train", "--json", timeout=600)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        fleet.versions["canary"] = json.loads(trained.stdout)["version"]
    MlflowClient(tracking_uri=fleet.env["CONVEYOR_MLFLOW_TRACKING_URI"]).set_registered_model_alias(
        NAME, "canary", fleet.versions["canary"]
    )
    assert fleet.replicas[0].admin("POST", "reload", fleet.admin_key).status_code == 200  # one replica is told
    fleet.until(lambda: all(fleet.status(i)["canary"] is not None for i in (0, 1)), 60, "a replica never loaded it")
    assert fleet.replicas[1].admin("POST", "weight", fleet.admin_key, {"weight": 50, "hold": True}).status_code == 200
    time.sleep(0.5)  # the new step's window reaches the other replica within a tick (0.2 s)


def test_a_key_revoked_from_another_machine_stops_on_both_replicas_within_a_second(fleet: Fleet) -> None:
    """The keys live in Redis: a command with a home of its own (another machine) creates and
    revokes a key, and both replicas follow."""
    import httpx

    elsewhere = {**fleet.env, "CONVEYOR_HOME": str(fleet.root.parent / "elsewhere")}
    made = conveyor(fleet.root, elsewhere, "api-key", "create", "visitor", "--json")
    assert made.returncode == 0, made.stdout + made.stderr
    key = json.loads(made.stdout)["key"]
    row = {"rows": [fleet.rows[0]]}

    def statuses() -> list[int]:
        return [
            httpx.post(f"{r.url}/predict", json=row, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code
            for r in fleet.replicas
        ]

    fleet.until(lambda: statuses() == [200, 200], 2, "a replica did not accept the new key")
    revoked = conveyor(fleet.root, elsewhere, "api-key", "revoke", "visitor")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    took = fleet.until(lambda: statuses() == [401, 401], 3, "a replica still accepts the revoked key")
    assert took < 1.0, f"the revocation took {took * 1000:.0f} ms to reach both replicas"


def test_the_whole_loop_drift_retrains_on_the_worker_and_the_canary_walks_both_replicas(
    fleet: Fleet, demo_files: dict[str, Path], tmp_path: Path
) -> None:
    """Drifted traffic through both replicas, its labels, a drift check whose event starts the
    retraining on the pool's worker, its canary served by both replicas and judged on both's
    traffic, and the verdict; then every store is read in its server."""
    import boto3
    import httpx
    import pandas as pd
    import redis
    from mlflow import MlflowClient

    from conveyor.demo.loop import _rows
    from conveyor.policies.project import load_project
    from conveyor.registry.inference_log import read_log

    mlflow = MlflowClient(tracking_uri=fleet.env["CONVEYOR_MLFLOW_TRACKING_URI"])
    ledger_url = fleet.env["CONVEYOR_LEDGER_URL"]
    window = 2_000
    drifted = tmp_path / "drifted.csv"
    pd.read_csv(demo_files["drift"]).head(window).to_csv(drifted, index=False)
    rows = _rows(drifted, load_project(fleet.root / "conveyor.yaml", check_data=False), window)
    replies = drive(fleet.replicas[0].url, fleet.client_key, rows[: window // 2], requests=window // 2)
    replies += drive(fleet.replicas[1].url, fleet.client_key, rows[window // 2 :], requests=window - window // 2)
    assert collections.Counter(r.status for r in replies) == {200: window}
    log = fleet.root / ".conveyor" / "inference" / NAME
    fleet.until(lambda: len(read_log(log)) >= window, 30, "the replicas' answers did not all reach the log")
    assert read_log(log)["deployment"].nunique() == 2  # each replica's own part files, one log for monitoring

    labelled = conveyor(fleet.root, fleet.env, "labels", "add", str(drifted), "--no-retrain")
    assert labelled.returncode == 0, labelled.stdout + labelled.stderr
    checked = conveyor(fleet.root, fleet.env, "drift", "check", "--window", str(window))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "retraining requested from the Prefect server" in checked.stdout

    # The event starts the retraining deployment; the pool's worker runs it.
    def ended() -> list:
        return _events(ledger_url, "retraining.completed", "retraining.failed")

    fleet.until(ended, 420, "the retraining did not end on the worker (see the servers' prefect folder)")
    completed = _events(ledger_url, "retraining.completed")
    assert completed, [e.details for e in ended()]
    trigger = _events(ledger_url, "retraining.triggered")[-1].outputs[0]
    assert trigger in completed[0].inputs and completed[0].details["canary"], completed[0].details
    retrained, replaced = str(completed[0].details["version"]), fleet.versions["champion"]
    assert mlflow.get_model_version_by_alias(NAME, "canary").version == retrained

    # One replica is told (as its registry watch would); the canary reaches both and walks its steps.
    assert fleet.replicas[0].admin("POST", "reload", fleet.admin_key).status_code == 200
    fleet.until(
        lambda: all((fleet.status(i)["canary"] or {}).get("version") == retrained for i in (0, 1)),
        60,
        "a replica did not load the canary",
    )

    def verdict() -> list:
        return _events(ledger_url, "model.canary_completed", "model.canary_rolled_back")

    spread = [f"applicant-{i}" for i in range(200)]
    for _ in range(30):  # bounded: at most 30 rounds of 200 requests a replica
        for replica in fleet.replicas:
            drive(replica.url, fleet.client_key, rows, requests=200, keys=spread)
        if verdict():
            break
    ended_by = verdict()
    assert ended_by and ended_by[0].kind == "model.canary_completed", [e.details for e in ended_by] or fleet.status(0)
    assert ended_by[0].details["promoted"], ended_by[0].details
    assert len(ended_by[0].details["figures"]["canary_requests_by_worker"]) == 2  # both replicas' traffic
    assert mlflow.get_model_version_by_alias(NAME, "champion").version == retrained
    fleet.until(
        lambda: all((fleet.status(i)["champion"] or {}).get("version") == retrained for i in (0, 1)),
        30,
        "a replica still serves the old champion",
    )
    fleet.versions.update(champion=retrained, canary=replaced)  # the next tests' canary: the old champion

    # Every store in its server: the ledger (PostgreSQL) holds the loop and the audit passes; the
    # retraining's run (MLflow server) names its cause and its artifacts are in the bucket; the
    # replicas' state and the features are in Redis.
    assert {e.kind for e in _events(ledger_url, *_LOOP)} == set(_LOOP)
    audit = conveyor(fleet.root, fleet.env, "audit", f"{NAME}/{retrained}")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    run = mlflow.get_run(str(mlflow.get_model_version(NAME, retrained).run_id))
    assert run.data.tags.get("conveyor.cause") == trigger, run.data.tags
    s3 = boto3.client(
        "s3",
        endpoint_url=fleet.env["CONVEYOR_OBJECT_STORE_URL"],
        aws_access_key_id=fleet.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=fleet.env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=fleet.env["CONVEYOR_BUCKET"])
    objects = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert any(k.startswith("mlflow/") and run.info.run_id in k for k in objects)
    assert any(k.startswith("prefect-results/") for k in objects)  # the training's outcome came back through it
    # Prefect: the first training and the retraining were flow runs of their deployments, run by the pool's worker.
    api = fleet.env["CONVEYOR_PREFECT_API_URL"]
    deployments = {d["id"]: d["name"] for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()}
    runs = collections.Counter(
        (deployments.get(r["deployment_id"]), r["work_pool_name"], r["state"]["type"])
        for r in httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        if r["parameters"].get("workspace", {}).get("ledger_url") == ledger_url
    )
    pool = fleet.env["CONVEYOR_WORK_POOL"]
    assert runs[("conveyor", pool, "COMPLETED")] == 1 and runs[(f"retraining-{NAME}", pool, "COMPLETED")] == 1, runs
    assert runs[(f"drift-check-{NAME}", pool, "SCHEDULED")] >= 1, runs  # the server's scheduler made its next runs
    online = redis.Redis.from_url(fleet.redis.url)
    try:
        keys = {k.decode() for k in online.scan_iter(count=1000)}
    finally:
        online.close()
    assert f"conveyor:serving:{NAME}:{NAME}:canary" in keys  # the model's name, then the run's (its name too)
    assert sum(not k.startswith("conveyor:") for k in keys) >= 100  # Feast's: one hash per entity


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


def _events(ledger_url: str, *kinds: str) -> list:
    from conveyor.registry.ledger import Ledger

    with Ledger(ledger_url) as ledger:
        return [e for e in ledger.iter_events() if e.kind in kinds]


def test_an_alias_change_reaches_both_and_one_analysis_counts_both(fleet: Fleet) -> None:
    _make_canary(fleet)
    replies = fleet.drive_both(300)
    assert collections.Counter(r.status for r in replies) == {200: len(replies)}
    by_canary = sum(r.body["served_by"] == "canary" for r in replies)
    assert by_canary > 100

    def counted() -> bool:  # each replica flushes its observations five times a second
        return all(_canary_seen(fleet, i) == by_canary for i in (0, 1))

    fleet.until(counted, 3, f"the analysis did not count the {by_canary} canary answers: {fleet.status(0)['analysis']}")
    assert len(fleet.status(0)["analysis"]["canary_requests_by_worker"]) == 2  # one worker per replica
    _each_replica_logged(fleet, {r.body["request_id"] for r in replies})

    # An abort on one replica stops the canary on both, at once.
    assert fleet.replicas[0].admin("POST", "abort", fleet.admin_key, {"reason": "test"}).status_code == 200
    took = fleet.until(lambda: all(fleet.status(i)["canary"] is None for i in (0, 1)), 5, "a replica kept the canary")
    assert took < 1.0, f"the abort took {took * 1000:.0f} ms to reach both replicas"


def _canary_seen(fleet: Fleet, replica: int) -> int:
    """The canary's answers the analysis counted: its requests but those it failed (which the
    champion answered, so the client saw served_by: champion)."""
    analysis = fleet.status(replica)["analysis"]
    return int(analysis["canary_requests"]) - int(analysis["canary_errors"])


def _each_replica_logged(fleet: Fleet, ids: set[str]) -> None:
    """Every answer once in the inference log, which both replicas wrote (the files monitoring reads)."""
    from conveyor.registry.inference_log import read_log
    from conveyor.registry.ledger import Ledger

    folder = fleet.root / ".conveyor" / "inference" / NAME
    fleet.until(lambda: ids <= set(read_log(folder)["request_id"]), 15, "an answer is missing from the log")
    frame = read_log(folder)
    ours = frame[frame["request_id"].isin(ids)]
    assert not ours.duplicated(["request_id", "row"]).any()
    with Ledger(fleet.env["CONVEYOR_LEDGER_URL"]) as ledger:
        instances = {e.outputs[0]: e.details["instance"] for e in ledger.iter_events() if e.kind == "model.deployed"}
    assert len({instances[d] for d in ours["deployment"]}) == 2  # one worker of each replica


def test_a_replica_killed_mid_canary_leaves_the_other_serving_with_the_counts(fleet: Fleet) -> None:
    _make_canary(fleet)
    before = fleet.drive_both(200)
    counted = sum(r.body["served_by"] == "canary" for r in before)
    assert counted > 50
    fleet.until(lambda: _canary_seen(fleet, 1) == counted, 3, f"{counted} answers: {fleet.status(1)['analysis']}")

    victim = fleet.replicas[0]
    assert victim.process is not None
    import psutil

    leader = psutil.Process(victim.process.pid)  # the replica, all of it: BentoML's workers have sessions of their own
    every = [leader, *leader.children(recursive=True)]
    assert len(every) > 1
    for process in every:
        process.kill()
    psutil.wait_procs(every, timeout=10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in every)
    after = drive(fleet.replicas[1].url, fleet.client_key, fleet.rows, requests=200, concurrency=8)
    assert collections.Counter(r.status for r in after) == {200: 200}
    total = counted + sum(r.body["served_by"] == "canary" for r in after)
    fleet.until(lambda: _canary_seen(fleet, 1) == total, 3, f"{total} answers: {fleet.status(1)['analysis']}")
    assert fleet.status(1)["canary"] is not None  # still running, on the survivor


def test_a_redis_restart_mid_traffic_is_no_client_s_error(fleet: Fleet) -> None:
    survivor = fleet.replicas[1]
    fleet.redis.stop()
    during = drive(survivor.url, fleet.client_key, fleet.rows, requests=200, concurrency=8)
    status = fleet.status(1)  # the last known state
    fleet.redis.start()  # empty: the survivor restores what it knew
    after = drive(survivor.url, fleet.client_key, fleet.rows, requests=200, concurrency=8)
    assert collections.Counter(r.status for r in during + after) == {200: 400}
    assert status["canary"] is not None and status["analysis"]["state"] == "running"
    # back within seconds: the next shared-state ticks see Redis again, restore the rows and flush
    # what was observed (10 s: one run on a loaded machine took 5.1)
    fleet.until(lambda: fleet.status(1)["analysis"]["canary_requests"] > 0, 10, "the observations did not come back")
