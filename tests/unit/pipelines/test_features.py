"""The feature definitions: a pure function of the config (their digest is recorded)."""

from __future__ import annotations

from conveyor.pipelines.features import feature_spec
from conveyor.policies.project import ProjectConfig


def test_the_feature_spec_is_the_config_and_nothing_else(config: ProjectConfig) -> None:
    spec = feature_spec(config)
    assert spec == feature_spec(config.model_copy())  # same config, same spec (and digest)
    changed = config.model_copy(update={"feature_ttl_days": config.feature_ttl_days + 1})
    assert feature_spec(changed) != spec
