"""The policies Conveyor ships (package data, what `conveyor init` starts a project from) are the
demo project's own: one set, checked, so the two copies cannot drift apart unnoticed."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import pytest

import conveyor.policies
from conveyor.policies.loading import load_policy
from conveyor.registry.workspace import POLICIES
from tests.conftest import REPO

SHIPPED = Path(conveyor.policies.__file__).parent / "defaults"
# the project's policies, and the guardrail policy an LLM release names (assistant.yaml `guardrails:`)
KINDS = POLICIES | {"guardrails": "conveyor.policies.guardrails:GuardrailPolicy"}


def test_every_policy_is_shipped_and_nothing_else() -> None:
    assert sorted(p.stem for p in SHIPPED.glob("*.yaml")) == sorted(KINDS)
    assert sorted(p.stem for p in (REPO / "policies").glob("*.yaml")) == sorted(KINDS)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_shipped_policy_is_the_demo_project_s_and_loads(name: str) -> None:
    shipped = SHIPPED / f"{name}.yaml"
    assert shipped.read_bytes() == (REPO / "policies" / f"{name}.yaml").read_bytes(), (
        f"policies/{name}.yaml and the package's default differ: change both, or say here why they may"
    )
    module, _, cls_name = KINDS[name].partition(":")
    load_policy(shipped, getattr(import_module(module), cls_name))
