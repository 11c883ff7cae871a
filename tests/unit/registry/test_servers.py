"""The server profile's settings and the doctor's probes, without the servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.policies.errors import ConfigInvalid
from conveyor.registry.servers import check_stores, redacted
from conveyor.registry.settings import SERVER_SETTINGS, read_settings
from conveyor.registry.workspace import Workspace

SERVERS = {
    "ledger_url": "postgresql+psycopg://ledger@db:5432/ledger",
    "mlflow_tracking_uri": "http://mlflow:5000",
    "prefect_api_url": "http://prefect:4200/api",
    "work_pool": "conveyor",
    "redis_url": "redis://cache:6379/0",
    "object_store_url": "http://s3:9000",
    "bucket": "conveyor",
    "feature_registry_url": "postgresql+psycopg://feast@db:5432/features",
}


def test_the_server_profile_names_every_missing_server() -> None:
    with pytest.raises(ConfigInvalid) as raised:
        read_settings(profile="servers", redis_url="redis://cache:6379/0")
    message = str(raised.value)
    missing = [name for name in SERVER_SETTINGS if name != "redis_url"]
    assert all(f"CONVEYOR_{name.upper()} is not set" in message for name in missing)
    assert "CONVEYOR_REDIS_URL" not in message


def test_the_server_profile_refuses_embedded_stores() -> None:
    with pytest.raises(ConfigInvalid) as raised:
        read_settings(
            profile="servers", **{**SERVERS, "ledger_url": "sqlite:///l.db", "mlflow_tracking_uri": "sqlite:///m.db"}
        )
    assert "the ledger is a SQLite file" in str(raised.value)
    assert "MLflow's tracking store is not a server" in str(raised.value)


def test_a_complete_server_profile_keeps_every_url_and_passes_it_on(tmp_path: Path) -> None:
    (tmp_path / "conveyor.yaml").write_text("settings: {}\n")
    ws = Workspace.open(tmp_path, profile="servers", **SERVERS)
    assert ws.settings.servers and ws.ledger_url == SERVERS["ledger_url"]
    rebuilt = Workspace.from_params(ws.params())  # what a flow run on a worker opens
    assert {name: getattr(rebuilt.settings, name) for name in SERVERS} == SERVERS
    assert rebuilt.settings.profile == "servers"
    assert ws.environment()["PREFECT_API_URL"] == SERVERS["prefect_api_url"]


def test_passwords_are_not_shown() -> None:
    assert redacted("postgresql://u:secret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redacted("redis://:pw@cache/0") == "redis://:***@cache/0"
    assert redacted("http://mlflow:5000") == "http://mlflow:5000"


def test_doctor_says_which_store_does_not_answer(tmp_path: Path) -> None:
    (tmp_path / "conveyor.yaml").write_text("settings: {}\n")
    ws = Workspace.open(tmp_path, home=str(tmp_path / ".conveyor"), redis_url="redis://127.0.0.1:1/0")
    checks = {c.store: c for c in check_stores(ws)}
    assert checks["ledger"].ok and checks["tracking and registry (MLflow)"].ok
    redis = checks["online features, replicas' state, API keys (Redis)"]
    assert not redis.ok and "refused" in redis.detail.lower() and redis.ms < 5000
