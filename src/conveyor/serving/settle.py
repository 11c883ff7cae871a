"""After an answer: its tokens and cost settled, and the request counted, observed, logged and traced.

The reservation made before the answer is settled with the counts the runtime reported (a cached
answer costs nothing). The metrics are counted at once; the inference log and the trace are
written off the request path. The canary's analysis sees the answers of the champion and the
canary that a model gave (not the cache's, not the fallback's, not an input guardrail's refusal).
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any

from conveyor.policies.gateway import GatewayPolicy
from conveyor.registry.inference_log import InferenceLog, LlmLogEntry
from conveyor.serving.auth import Role
from conveyor.serving.core import ServingCore
from conveyor.serving.meter import Meter, Reservation, cost_of
from conveyor.serving.prepare import Prepared
from conveyor.serving.runtime import GenerateRuntime
from conveyor.serving.stream import Outcome, tpot_of
from conveyor.serving.tracing import Tracer

__all__ = ["Settler"]


class Settler:
    def __init__(
        self, core: ServingCore[GenerateRuntime], meter: Meter, log: InferenceLog, tracer: Tracer, score_share: float
    ) -> None:
        self.core, self.meter, self.log, self.tracer = core, meter, log, tracer
        self._score, self._score_share = random.Random(), score_share

    def settle(self, reservation: Reservation, outcome: Outcome) -> float:
        """Settle the tokens and cost reserved for a request with what it took; the cost."""
        cost = (
            0.0
            if outcome.cached or outcome.release is None
            else cost_of(outcome.prompt_tokens, outcome.completion_tokens, outcome.release.verified.pricing)
        )
        self.meter.settle(reservation, outcome.prompt_tokens + outcome.completion_tokens, cost)
        return cost

    def record(
        self,
        policy: GatewayPolicy,
        request_id: str,
        request: Any,
        prepared: Prepared,
        outcome: Outcome,
        caller: Role,
        team: str,
        cost: float | None,
        arrived: float,
        chat: bool,
    ) -> None:
        """Count, observe, log and trace a request."""
        duration = time.perf_counter() - arrived
        release = outcome.release.verified if outcome.release is not None else None
        name, version = (release.name, release.version) if release else (request.model, "?")
        labels = (name, version, outcome.role)
        m = self.core.metrics
        m.llm_requests.labels(*labels, outcome.status).inc()
        m.llm_duration.labels(*labels).observe(duration)
        if outcome.ttft_ms is not None and outcome.status == "ok":
            m.llm_ttft.labels(*labels).observe(max(outcome.ttft_ms, 0.0) / 1000)
        tpot = tpot_of(outcome)
        if tpot is not None:
            m.llm_tpot.labels(*labels).observe(tpot / 1000)
        m.llm_tokens.labels(team, name, version, "input").inc(outcome.prompt_tokens)
        m.llm_tokens.labels(team, name, version, "output").inc(outcome.completion_tokens)
        m.llm_cost.labels(team, name, version).inc(cost or 0.0)
        spent, budget = self.meter.spend(team)
        m.llm_budget.labels(team).set(spent / budget if budget else 0.0)
        for rule in [*([outcome.blocked_by] if outcome.blocked_by else []), *outcome.redactions]:
            m.llm_guardrails.labels(name, version, rule, "block" if rule == outcome.blocked_by else "redact").inc()
        if (
            outcome.role in ("champion", "canary")
            and outcome.release is not None
            and not outcome.cached
            and outcome.status in ("ok", "blocked")
        ) and prepared.blocked_by is None:
            self._observe(outcome, tpot)
        entry = LlmLogEntry(
            request_id=request_id,
            time=datetime.now(UTC),
            model=name,
            version=version,
            served_by=outcome.role,
            deployment=outcome.release.deployment if outcome.release is not None else None,
            release_digest=release.version_digest if release else None,
            prompt_version=release.prompt_version if release else None,
            team=team,
            key=caller.id or caller.name,
            endpoint="chat" if chat else "completions",
            stream=bool(request.stream),
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            cost_usd=cost or 0.0,
            ttft_ms=outcome.ttft_ms,
            duration_ms=duration * 1000,
            cached=outcome.cached,
            status=outcome.status,
            finish_reason=outcome.finish_reason,
            blocked_by=outcome.blocked_by or prepared.blocked_by,
            redactions=",".join(outcome.redactions) or None,
            refused=outcome.refused,
            fallback_from=",".join(outcome.fallbacks) or None,
            passages=",".join(p["id"] for p in outcome.passages) or None,
            sources=",".join(dict.fromkeys(p["digest"] for p in outcome.passages)) or None,
            retrieval_score=outcome.retrieval_score
            if outcome.retrieval_score is not None
            else prepared.retrieval_score,
            question=prepared.question if policy.log_text and prepared.blocked_by is None else None,
            answer=outcome.text if policy.log_text else None,
        )
        self.log.record(entry)
        self.tracer.record(
            entry,
            request_model=request.model,
            max_tokens=int(prepared.params["max_tokens"]),
            temperature=float(prepared.params.get("temperature", 0.0)),
            started=time.time() - duration,
        )

    def _observe(self, outcome: Outcome, tpot: float | None) -> None:
        scored = self._score.random() < self._score_share
        signals: dict[str, Any] = {
            "ttft_ms": outcome.model_ttft_ms or 0.0,
            "tpot_ms": tpot,
            "blocked": float(outcome.blocked_by is not None),
            "refused": float(outcome.refused),
            "scored": float(scored),
            # the offline scorers that need no reference: a whole answer (not cut at its limit) that does not refuse
            "score_ok": float(outcome.finish_reason == "stop" and not outcome.refused),
        }
        self.core.observed(outcome.role, latency_ms=outcome.model_ms, signals=signals)
