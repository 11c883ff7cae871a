"""The serving policy (``policies/serving.yaml``): callers, limits, and how models are watched."""

from __future__ import annotations

from typing import Literal

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
    failed_auth_limit: RateLimit = RateLimit(per_second=5, burst=20)  # wrong keys per client address
    max_rows: int = Field(1_000, ge=1, le=100_000)
    max_body_bytes: int = Field(1_048_576, ge=1_024, le=1_073_741_824)
    header_timeout_seconds: float = Field(10, gt=0, le=600)
    body_timeout_seconds: float = Field(10, gt=0, le=600)
    unknown_categories: Literal["refuse", "flag"] = "refuse"
    docs: Literal["admin", "off"] = "admin"
    workers: int = Field(1, ge=1, le=64)
    canary_timeout_ms: float = Field(2_000, gt=0)
    watch_seconds: float = Field(10, gt=0)
