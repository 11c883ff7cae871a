"""The model service: one serving core (champion, canary and fallback behind one endpoint, verified
loading, analysis and rollback) with two front ends, the tabular endpoint and the OpenAI gateway.
Its public names load on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor._exports import exports as _exports

if TYPE_CHECKING:
    from conveyor.serving.answer import LlmRelease, Reply
    from conveyor.serving.auth import ApiKeys, open_api_keys
    from conveyor.serving.core import ServingCore
    from conveyor.serving.gateway import Gateway
    from conveyor.serving.releases import ReleaseLoader
    from conveyor.serving.runtime import GenerateRuntime, Loader, ModelRuntime, PredictRuntime, Served
    from conveyor.serving.tabular import TabularEndpoint, TabularLoader

__all__ = [
    "ApiKeys",
    "Gateway",
    "GenerateRuntime",
    "LlmRelease",
    "Loader",
    "ModelRuntime",
    "PredictRuntime",
    "ReleaseLoader",
    "Reply",
    "Served",
    "ServingCore",
    "TabularEndpoint",
    "TabularLoader",
    "open_api_keys",
]

__getattr__ = _exports(
    __name__,
    {
        "conveyor.serving.core": ["ServingCore"],
        "conveyor.serving.runtime": ["GenerateRuntime", "Loader", "ModelRuntime", "PredictRuntime", "Served"],
        "conveyor.serving.tabular": ["TabularEndpoint", "TabularLoader"],
        "conveyor.serving.gateway": ["Gateway"],
        "conveyor.serving.releases": ["ReleaseLoader"],
        "conveyor.serving.answer": ["LlmRelease", "Reply"],
        "conveyor.serving.auth": ["ApiKeys", "open_api_keys"],
    },
)
