"""The server profile's servers for these tests: with-test-services.sh has started PostgreSQL,
Redis and the object store; the MLflow and Prefect servers (and a worker) start here, once, for
as long as these tests run (scripts/python-servers.sh), so the rest of the suite runs without them."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO


def _read_env(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if "=" in line]
    return {line.split("=", 1)[0]: line.split("=", 1)[1] for line in lines}


def _wait(url: str, seconds: float, log: Path | None) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else "(no log)"
            pytest.fail(f"{url} did not answer within {seconds:.0f} s; the end of {log}:\n{tail}")
        time.sleep(0.5)


def _wait_for_a_worker(api: str, pool: str, folder: Path, seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = httpx.post(f"{api}/work_pools/{pool}/workers/filter", json={}, timeout=5)
        if response.status_code == 200 and any(w.get("status") == "ONLINE" for w in response.json()):
            return
        time.sleep(0.5)
    pytest.fail(f"no worker came online on pool {pool} within {seconds:.0f} s (see {folder / 'prefect'})")


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, str]]:
    """The profile's settings for the servers on 127.0.0.1 (skips where the script could not start them)."""
    given = os.environ.get("CONVEYOR_TEST_SERVERS_ENV")
    if not given:
        pytest.skip("the server profile's servers are not running: `make test` starts them on 127.0.0.1")
    settings = _read_env(Path(given))
    folder = Path(given).parent
    process = None
    if os.environ.get("CONVEYOR_TEST_SERVERS_BIN"):  # left to us by the script
        with (folder / "python-servers.log").open("w") as log:
            process = subprocess.Popen(
                ["bash", str(REPO / "scripts" / "python-servers.sh"), os.environ["CONVEYOR_TEST_SERVERS_BIN"]],
                env={**os.environ, "SERVERS_DIR": str(folder)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    try:
        _wait(f"{settings['CONVEYOR_MLFLOW_TRACKING_URI']}/health", 300, folder / "mlflow" / "log")
        _wait(f"{settings['CONVEYOR_PREFECT_API_URL']}/health", 300, folder / "prefect" / "log")
        _wait_for_a_worker(settings["CONVEYOR_PREFECT_API_URL"], settings["CONVEYOR_WORK_POOL"], folder)
        yield settings
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)
