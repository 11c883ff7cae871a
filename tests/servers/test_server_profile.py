"""The server profile on real servers (scripts/servers.sh starts them on 127.0.0.1): PostgreSQL,
Redis, OpenStack Swift's S3 API, an MLflow server, a Prefect server and a process worker.

Every command runs as its own process, as a user's would, with the profile's settings only; each
store is then read back in its server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import postgres_database

pytestmark = pytest.mark.slow
CONVEYOR = str(Path(sys.executable).with_name("conveyor"))


@pytest.fixture
def profile(servers: dict[str, str], project: Path) -> Iterator[dict[str, str]]:
    """The environment of a command in the server profile, with a ledger database and a model name
    of its own (the MLflow server's registry outlives a test)."""
    rename_model(project, f"loan-default-{uuid.uuid4().hex[:8]}")
    with postgres_database("ledger") as ledger_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PREFECT_", "MLFLOW_"))}
        env.update(servers)
        env["CONVEYOR_LEDGER_URL"] = ledger_url
        env["CONVEYOR_HOME"] = str(project / ".conveyor")
        yield env


def rename_model(root: Path, name: str) -> None:
    """The demo project at ``root`` as model ``name`` (its config and its expectation suite)."""
    config = root / "conveyor.yaml"
    config.write_text(config.read_text().replace("model_name: loan-default", f"model_name: {name}"))
    suites = root / "policies" / "expectations"
    shutil.copy(suites / "loan-default.json", suites / f"{name}.json")


def conveyor(project: Path, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CONVEYOR, *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_an_llm_release_builds_on_the_worker(servers: dict[str, str], tmp_path: Path) -> None:
    """``conveyor llm build`` in the profile: the release flow runs on the pool's worker with the
    real local model, is registered in the MLflow server and recorded in the PostgreSQL ledger."""
    import httpx
    from mlflow import MlflowClient

    from tests.conftest import copy_llm_project

    config = copy_llm_project(tmp_path / "assistant")
    root = config.parent
    with postgres_database("llm") as ledger_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PREFECT_", "MLFLOW_"))}
        env.update(servers, CONVEYOR_LEDGER_URL=ledger_url, CONVEYOR_HOME=str(root / ".conveyor"))
        deployed = conveyor(root, env, "--config", str(config), "deploy", "--json")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        names = json.loads(deployed.stdout)["deployments"]
        assert "llm-release/conveyor" in names and not any(n.startswith("retraining") for n in names)
        started = time.time()
        built = conveyor(root, env, "--config", str(config), "llm", "build", "--json", timeout=900)
        assert built.returncode == 0, built.stdout + built.stderr
        outcome = json.loads(built.stdout)
        audit = conveyor(root, env, "--config", str(config), "audit", f"{outcome['name']}/{outcome['version']}")
        assert audit.returncode == 0, audit.stdout + audit.stderr
        import sqlalchemy as sa

        engine = sa.create_engine(ledger_url)
        try:
            with engine.connect() as conn:
                kinds = {row[0] for row in conn.exec_driver_sql("select kind from ledger_events")}
        finally:
            engine.dispose()
    assert outcome["alias"] == "candidate" and outcome["metrics"]["pass_rate"] > 0
    api = servers["CONVEYOR_PREFECT_API_URL"]
    after = {"flow_runs": {"start_time": {"after_": _utc(started).isoformat()}}}
    runs = httpx.post(f"{api}/flow_runs/filter", json=after, timeout=10).json()
    ran = [r for r in runs if r["name"].startswith("build conveyor-assistant")]
    assert len(ran) == 1 and ran[0]["state"]["type"] == "COMPLETED", runs
    assert ran[0]["work_pool_name"] == servers["CONVEYOR_WORK_POOL"] and ran[0]["deployment_id"]
    version = MlflowClient(tracking_uri=servers["CONVEYOR_MLFLOW_TRACKING_URI"]).get_model_version(
        outcome["name"], outcome["version"]
    )
    assert version.tags["conveyor.kind"] == "llm-release"
    assert {"release.built", "release.evaluated", "model.signed", "model.registered"} <= kinds, kinds


def test_the_profile_without_its_servers_is_a_clear_error(project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PREFECT_"))}
    env.update(CONVEYOR_PROFILE="servers", CONVEYOR_REDIS_URL="redis://127.0.0.1:1/0")
    result = conveyor(project, env, "doctor")
    assert result.returncode == 2
    assert "CONVEYOR_WORK_POOL is not set" in result.stderr + result.stdout
    assert "the ledger is a SQLite file" not in result.stderr + result.stdout  # unset, not SQLite
    assert "Traceback" not in result.stderr


def test_doctor_names_a_store_that_does_not_answer(servers: dict[str, str], project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PREFECT_"))}
    env.update(servers)
    env["CONVEYOR_REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    result = conveyor(project, env, "doctor", "--json")
    assert result.returncode == 1
    stores = {s["store"]: s for s in json.loads(result.stdout)["stores"]}
    redis_check = stores["online features, replicas' state, API keys (Redis)"]
    assert not redis_check["ok"] and "refused" in redis_check["detail"].lower()
    assert all(s["ok"] for name, s in stores.items() if name != redis_check["store"])


def _utc(seconds: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds - 5, tz=UTC)


def test_prefect_yaml_deploys_with_prefect_deploy(servers: dict[str, str]) -> None:
    import httpx

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PREFECT_"))}
    env.update(servers, PREFECT_API_URL=servers["CONVEYOR_PREFECT_API_URL"], CONVEYOR_PROJECT_ROOT=str(REPO))
    env["PREFECT_HOME"] = str(Path(os.environ["CONVEYOR_HOME"]) / "prefect")
    prefect = str(Path(sys.executable).with_name("prefect"))
    done = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    api = servers["CONVEYOR_PREFECT_API_URL"]
    found = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
    ours = [d for d in found if d["parameters"].get("workspace", {}).get("home") == ".conveyor"]  # prefect.yaml's
    try:
        entrypoints = {(d["name"], d["entrypoint"]) for d in ours if d["work_pool_name"] == "conveyor"}
        for name, flow in [
            ("conveyor", "training"),
            ("conveyor", "llm_release"),
            ("retraining-loan-default", "retraining"),
            ("drift-check-loan-default", "drift_check"),
        ]:
            assert (name, f"src/conveyor/pipelines/deployments.py:{flow}") in entrypoints, entrypoints
        assistant = next(d for d in ours if d["entrypoint"].endswith(":llm_release"))
        assert assistant["parameters"]["workspace"]["project_file"] == "assistant.yaml"
    finally:  # its drift check is scheduled (it would run in the checkout), and `conveyor deploy` owns the rest
        for deployment in ours:
            httpx.delete(f"{api}/deployments/{deployment['id']}", timeout=10).raise_for_status()


def test_a_fresh_clone_pulls_the_data_from_the_bucket(profile: dict[str, str], project: Path, tmp_path: Path) -> None:
    from conveyor.registry.digests import file_digest

    def run(*args: str, cwd: Path = project) -> None:
        subprocess.run(args, cwd=cwd, env=profile, check=True, capture_output=True, timeout=120)

    dvc = str(Path(sys.executable).with_name("dvc"))
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@example.invalid")
    run("git", "init", "-q")
    run(dvc, "init", "-q")
    (project / "data" / "notes.txt").write_text(f"a file no earlier run pushed: {uuid.uuid4()}\n")
    run(dvc, "add", "-q", "data/loans.csv", "data/notes.txt")
    (project / ".gitignore").write_text(".conveyor/\n")
    run(*git, "add", "-A")
    run(*git, "commit", "-qm", "data")
    pushed = conveyor(project, profile, "data", "push", "--json")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert json.loads(pushed.stdout)["files"] >= 1  # notes.txt at least (loans.csv may be there already)
    assert f"s3://{profile['CONVEYOR_BUCKET']}/dvc" in json.loads(pushed.stdout)["remote"]

    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(project), str(clone), cwd=tmp_path)
    assert not (clone / "data" / "loans.csv").exists()
    env = {**profile, "CONVEYOR_HOME": str(clone / ".conveyor")}
    pulled = conveyor(clone, env, "data", "pull", "--json")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert json.loads(pulled.stdout)["files"] == 2
    for name in ("loans.csv", "notes.txt"):
        assert file_digest(clone / "data" / name) == file_digest(project / "data" / name)


def test_deploy_without_a_prefect_server_is_one_clear_paragraph(project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PREFECT_"))}
    nowhere = "127.0.0.1:1"  # nothing listens there
    env.update(
        CONVEYOR_PROFILE="servers",
        CONVEYOR_LEDGER_URL=f"postgresql+psycopg://x@{nowhere}/ledger",
        CONVEYOR_MLFLOW_TRACKING_URI=f"http://{nowhere}",
        CONVEYOR_PREFECT_API_URL=f"http://{nowhere}/api",
        CONVEYOR_WORK_POOL="conveyor",
        CONVEYOR_REDIS_URL=f"redis://{nowhere}/0",
        CONVEYOR_OBJECT_STORE_URL=f"http://{nowhere}",
        CONVEYOR_BUCKET="conveyor",
        CONVEYOR_FEATURE_REGISTRY_URL=f"postgresql+psycopg://x@{nowhere}/features",
    )
    result = conveyor(project, env, "deploy", timeout=120)
    assert result.returncode == 2
    assert f"The Prefect server at http://{nowhere}/api does not answer" in result.stderr
    assert "Traceback" not in result.stderr
