"""The feature definitions: a pure function of the config (their digest is recorded)."""

from __future__ import annotations

from conveyor.pipelines.features import feature_spec
from conveyor.policies.project import ProjectConfig


def test_the_feature_spec_is_the_config_and_nothing_else(config: ProjectConfig) -> None:
    spec = feature_spec(config)
    assert spec == feature_spec(config.model_copy())  # same config, same spec (and digest)
    changed = config.model_copy(update={"feature_ttl_days": config.feature_ttl_days + 1})
    assert feature_spec(changed) != spec


def test_the_repository_takes_its_stores_from_the_settings(tmp_path) -> None:
    from conveyor.pipelines.features import FeastStores, repo_config

    embedded = repo_config("p", tmp_path, FeastStores())
    assert embedded["online_store"] == {"type": "sqlite", "path": str(tmp_path / "online.db")}
    assert embedded["registry"] == str(tmp_path / "registry.db")
    servers = repo_config("p", tmp_path, FeastStores("postgresql+psycopg://f@db/features", "rediss://:pw@cache:6380/2"))
    assert servers["online_store"] == {"type": "redis", "connection_string": "cache:6380,db=2,password=pw,ssl=true"}
    assert servers["registry"]["registry_type"] == "sql"
    assert servers["registry"]["path"] == "postgresql+psycopg://f@db/features"
