"""The gateway policy (``policies/gateway.yaml``): who may spend how many tokens and how much money,
and how the LLM gateway protects itself (queues, deadlines, retries, the answer cache).

Every API key belongs to a team (``conveyor api-key create NAME --team T``; a key without one is
in ``default_team``). A request reserves its prompt's tokens plus its ``max_tokens`` in the key's
and the team's tokens-per-minute buckets and its worst-case cost in the team's budget before the
model runs; when the answer (or the stream, or a disconnected client's stream) ends, the
reservation is settled on the tokens actually counted. So concurrent requests can overspend a
budget by at most what one request reserves, never by a stampede.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Budget", "CacheRules", "GatewayPolicy", "Team"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Strict):
    usd: float = Field(gt=0)  # what the team may spend per period
    period: Literal["day", "week", "month"] = "month"
    action: Literal["reject", "alert"] = "reject"  # past it: refuse (429) or answer and alert
    alert_at: float = Field(0.8, gt=0, le=1)  # share of the budget at which an alert is logged


class Team(_Strict):
    tokens_per_minute: int = Field(20_000, ge=1)  # prompt + output tokens, all the team's keys together
    budget: Budget | None = None


class CacheRules(_Strict):
    enabled: bool = True  # exact answers at temperature 0, keyed by the release's digest and the request
    max_entries: int = Field(1_000, ge=1, le=1_000_000)
    ttl_seconds: float = Field(3_600, gt=0)


class GatewayPolicy(_Strict):
    teams: dict[str, Team] = {"default": Team()}
    default_team: str = "default"  # the team of a key created without one
    key_tokens_per_minute: int = Field(10_000, ge=1)  # one key's own limit, within its team's
    max_waiting: int = Field(16, ge=0, le=1_000)  # requests queued for one model; beyond, it is overloaded
    first_token_seconds: float = Field(20, gt=0)  # a model that has not begun its answer by then failed (timeout)
    canary_first_token_seconds: float = Field(10, gt=0)  # the same for a canary (the champion answers instead)
    total_seconds: float = Field(120, gt=0)  # the longest a whole answer may take
    fallback_attempts: int = Field(1, ge=0, le=3)  # releases tried after the champion (no retry storms)
    cache: CacheRules = CacheRules()
    log_text: bool = True  # the inference log keeps the request's and answer's text, personal data redacted

    @model_validator(mode="after")
    def _known_default(self) -> GatewayPolicy:
        if self.default_team not in self.teams:
            raise ValueError(f"default_team {self.default_team!r} is not one of the teams ({', '.join(self.teams)})")
        return self
