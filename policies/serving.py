"""The serving policy (``policies/serving.yaml``): callers, limits, and how models are watched."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RateLimit", "ServingPolicy"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimit(_Strict):
    per_second: float = Field(200, gt=0)
    burst: int = Field(400, ge=1)


class ServingPolicy(_Strict):
    api_keys_required: bool = True
    rate_limit: RateLimit = RateLimit()
    max_rows: int = Field(1_000, ge=1, le=100_000)
    canary_timeout_ms: float = Field(2_000, gt=0)
    watch_seconds: float = Field(10, gt=0)
