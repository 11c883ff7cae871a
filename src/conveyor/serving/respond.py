"""Who answers a prepared request, and what reaches the client.

The releases are tried in the order the core routed them (canary, champion, fallback). Each
applies its own input rules and limits (a release after the first prepares the request again);
a deterministic request (temperature 0) the same release answered before is answered from the
exact cache. A release that fails before the client has any of its answer gives way to the
next; one that fails after text was sent ends the stream with an error, which cannot be redone.
Every release failing is a 503 that names each failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from conveyor.policies.errors import ModelFailed, RequestRefused
from conveyor.policies.gateway import GatewayPolicy
from conveyor.serving.answer import generate
from conveyor.serving.answer_cache import AnswerCache
from conveyor.serving.core import ServingCore
from conveyor.serving.prepare import Prepared, prepare
from conveyor.serving.releases import ServedRelease, VerifiedRelease
from conveyor.serving.runtime import GenerateRuntime
from conveyor.serving.stream import AnswerStream, Outcome, Send, cacheable, conveyor_of, send_whole

__all__ = ["blocked", "respond"]


def blocked(model: ServedRelease, role: str, prepared: Prepared, **more: Any) -> Outcome:
    """The outcome of a request the release's input guardrails blocked: its refusal, no model call."""
    release = model.verified
    return Outcome(
        model,
        role,
        text=release.guardrails.policy.refusal,
        finish_reason="content_filter",
        blocked_by=prepared.blocked_by,
        refused=True,
        status="blocked",
        **more,
    )


async def respond(
    core: ServingCore[GenerateRuntime],
    policy: GatewayPolicy,
    cache: AnswerCache,
    request: Any,
    prepared: Prepared,
    order: list[tuple[ServedRelease, str]],
    *,
    request_id: str,
    chat: bool,
    send: Send,
    gone: asyncio.Event,
    arrived: float,
) -> Outcome:
    """The answer of the first release in ``order`` that gives one, sent to ``send``."""
    metrics = core.metrics
    stream = AnswerStream(send, request_id, request.model, chat, arrived) if request.stream else None
    fallbacks: list[str] = []
    failures: list[str] = []
    for model, role in order:
        release = model.verified
        try:  # a release after the first applies its own input rules and limits
            ready = prepared if release is order[0][0].verified else prepare(request, release, chat)
        except RequestRefused as exc:
            failures.append(f"{role} {release.name} version {release.version}: {exc}")
            continue
        if ready.blocked_by is not None:
            outcome = blocked(model, role, ready, fallbacks=fallbacks)
            await send_whole(send, request.model, request_id, outcome, chat, stream=request.stream)
            return outcome
        key = _cache_key(policy, release, ready, chat)
        if key is not None and (hit := cache.get(key)) is not None:
            outcome = Outcome(
                model,
                role,
                cached=True,
                fallbacks=fallbacks,
                passages=ready.passages,
                retrieval_score=ready.retrieval_score,
                **hit,
            )
            outcome.ttft_ms = (time.perf_counter() - arrived) * 1000
            metrics.llm_cache.labels(release.name, release.version, "hit").inc()
            await send_whole(send, request.model, request_id, outcome, chat, stream=request.stream)
            return outcome
        try:
            outcome = await generate(
                model,
                role,
                ready,
                first_token_seconds=policy.canary_first_token_seconds
                if role == "canary"
                else policy.first_token_seconds,
                total_seconds=policy.total_seconds,
                stream=stream,
                gone=gone,
                arrived=arrived,
            )
        except ModelFailed as exc:
            core.failed(model, role, exc)
            failures.append(f"{role} {release.name} version {release.version}: {exc.kind}")
            if stream is not None and stream.started:  # the client has part of the answer: it cannot be redone
                await stream.error(f"the model failed while answering ({exc.kind}); the failure is recorded")
                return Outcome(model, role, status="failed", fallbacks=fallbacks, finish_reason="error")
            fallbacks.append(role)
            continue
        outcome.fallbacks = fallbacks
        outcome.passages, outcome.retrieval_score = ready.passages, ready.retrieval_score
        if fallbacks:
            metrics.fallbacks.labels(core.name).inc()
            metrics.llm_fallbacks.labels(core.name, fallbacks[-1], role).inc()
        if key is not None and outcome.status == "ok":
            cache.put(key, cacheable(outcome))
            metrics.llm_cache.labels(release.name, release.version, "miss").inc()
        if stream is None:
            await send_whole(send, request.model, request_id, outcome, chat, stream=False)
        else:
            await stream.end(outcome, conveyor_of(outcome))
        return outcome
    raise RequestRefused(
        503,
        "no release could answer this request (" + "; ".join(failures) + "); it is recorded, retry later",
        kind="server_error",
        code="unavailable",
    )


def _cache_key(policy: GatewayPolicy, release: VerifiedRelease, prepared: Prepared, chat: bool) -> str | None:
    if not policy.cache.enabled or float(prepared.params.get("temperature", 0.0)) != 0.0:
        return None
    material = json.dumps([release.version_digest, chat, prepared.request, prepared.params], sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()
