"""The LLM gateway: the serving engine for an LLM project, behind the OpenAI API.

The same engine as for tabular models (``serving.engine``): the leader follows the registry's
``champion`` and ``canary`` aliases, every release is verified before it is loaded (signature,
provenance, the weights' digest) and again on every switch, each runs in a process of its own
(``serving.llm_process``), the canary's weight walks ``policies/canary.yaml`` (its ``llm``
section) and is judged on its answers' signals; a rollback or a promotion is recorded as for any
model. The project's ``fallback`` release (its own ``@champion``) is loaded beside them.

A request (``POST /v1/chat/completions`` or ``/v1/completions``, streamed or not):

1. is checked field by field (``serving.openai_api``) and against the release's limits;
2. passes the release's input guardrails: normalised, invisible characters stripped, injection
   and secret-seeking patterns blocked, personal data redacted, its tokens counted and capped;
3. reserves its tokens and worst-case cost (``serving.meter``): 429 past the key's or team's
   tokens per minute or the team's budget;
4. is answered from the exact cache when it is deterministic (temperature 0) and the same release
   (by digest) answered it before, else by the release it is routed to: the canary (sticky per
   user or key) failing, the champion answers; the champion failing (error, timeout, overload,
   an empty answer), the fallback release, once; then a clear 503;
5. goes out through the output guardrails (``StreamGuard`` when streamed: nothing is sent that a
   rule could still match), with the token counts the runtime reports, which equal a re-count
   with the model's tokenizer; every answer says which release and role served it;
6. is settled, logged (texts redacted), counted in the metrics and traced, off the request path.

Its steps live beside it: opening a release (``serving.releases``), preparing a request for one
(``serving.prepare``), the answer on the wire (``serving.stream``), the exact cache
(``serving.answer_cache``) and the tokens' accounting (``serving.meter``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from conveyor.policies.errors import LoadRefused, ModelFailed, RequestRefused
from conveyor.policies.gateway import GatewayPolicy
from conveyor.registry.inference_log import LlmLogEntry
from conveyor.registry.release import CHAMPION
from conveyor.registry.workspace import Workspace
from conveyor.serving.answer import generate
from conveyor.serving.answer_cache import AnswerCache
from conveyor.serving.auth import Role
from conveyor.serving.canary import LlmCanaryController
from conveyor.serving.engine import Engine
from conveyor.serving.llm_process import ReleaseProcess
from conveyor.serving.meter import Meter, cost_of, spent_in_log
from conveyor.serving.openai_api import ChatRequest, CompletionRequest, parse_request
from conveyor.serving.prepare import Prepared, prepare
from conveyor.serving.releases import FALLBACK, ServedRelease, VerifiedRelease, load_release
from conveyor.serving.runtime import GenerateRuntime
from conveyor.serving.stream import AnswerStream, Outcome, Send, cacheable, conveyor_of, send_whole, tpot_of
from conveyor.serving.tracing import Tracer

__all__ = ["Gateway"]

log = logging.getLogger("conveyor.serving")


class Gateway(Engine):
    """The engine of an LLM project: its releases as champion, canary and fallback, and the request path."""

    controller_class = LlmCanaryController
    serves_llm = True
    champion: ServedRelease | None  # type: ignore[assignment]
    canary: ServedRelease | None  # type: ignore[assignment]
    paths: dict[str, set[str]] = {  # noqa: RUF012
        "/v1/chat/completions": {"POST"},
        "/v1/completions": {"POST"},
        "/v1/models": {"GET"},
        "/v1/feedback": {"POST"},
        "/metrics": {"GET"},
    }

    def __init__(self, ws: Workspace) -> None:
        super().__init__(ws)
        self.gateway: GatewayPolicy = ws.gateway_policy()
        self.fallback: ServedRelease | None = None
        self._refused_fallback: str | None = None
        self.meter = Meter(self.gateway, share=self._share, spent=self._spent_so_far())
        self.cache = AnswerCache(self.gateway.cache.max_entries, self.gateway.cache.ttl_seconds)
        self.tracer = Tracer(ws.home / "serving" / "traces", service=self.name)
        self._feedback_dir = ws.home / "feedback" / self.name / "incoming"
        self._feedback_lock = threading.Lock()
        self._score = random.Random()
        self._score_share = self.controller.policy.llm.score_share  # read once, as the rest of the policy

    def _read_project(self, ws: Workspace) -> None:
        project = ws.llm_project()
        self.name = project.name
        self.fallback_name = project.fallback

    def _warm(self) -> Any:
        return None  # each release starts its own process

    # -- releases -------------------------------------------------------------------------------

    def _verify(self, version: str, role: str) -> VerifiedRelease | None:  # type: ignore[override]
        name = self.fallback_name if role == FALLBACK else self.name
        assert name is not None  # a fallback role exists only for a project that names one
        try:
            return load_release(self.ws, name, version, self.ledger, self.ws.home / "serving" / "releases")
        except LoadRefused as exc:
            self._refuse(version, role, str(exc))
            return None

    def _start_model(self, verified: Any, role: str, timeout: float | None) -> ServedRelease | None:  # type: ignore[override]
        if self._stop.is_set():
            verified.discard()
            return None
        process = self.open_generate_runtime(verified, role)
        try:
            process.wait_loaded()
        except LoadRefused as exc:
            verified.discard()
            if self._stop.is_set():
                return None
            self._refuse(verified.version, role, str(exc))
            return None
        model = ServedRelease(verified, process)
        model.deployment = self._deployed(verified, role)
        return model

    def open_generate_runtime(self, verified: VerifiedRelease, role: str) -> GenerateRuntime:
        """Where a verified release's model runs (``serving.runtime``): llama.cpp in a child process
        of its own, on the release's weights."""
        runtime = verified.manifest["runtime"]
        return ReleaseProcess(
            verified.folder / verified.manifest["weights"]["file"],
            {
                "context": int(runtime["context"]),
                "threads": int(runtime["threads"]),
                "seed": int(verified.manifest["generation"].get("seed", 0)),
                "chat_format": runtime.get("chat_format"),
            },
            name=f"{verified.name}-{verified.version}-{role}",
            max_waiting=self.gateway.max_waiting,
        )

    def _load_champion(self, version: str) -> None:
        super()._load_champion(version)
        self._share_cores()

    def _load_canary(self, version: str) -> None:
        super()._load_canary(version)
        self._share_cores()

    def _stop_canary(self) -> None:
        super()._stop_canary()
        self._share_cores()

    def _share_cores(self) -> None:
        """The models that take traffic split the cores between them: llama.cpp's threads spin, so a
        champion and a canary each on every core answer slower than each on its half
        (``bench/llm_threads.py``)."""
        routed = [m for m in (self.champion, self.canary) if m is not None]
        share = max(1, len(os.sched_getaffinity(0)) // max(1, len(routed)))
        for model in (*routed, getattr(self, "fallback", None)):
            if model is not None:
                model.process.set_threads(share)

    def _accept_champion(self, verified: Any) -> None:
        pass  # the OpenAI API's shapes do not depend on the release

    def _accept_canary(self, verified: Any) -> str | None:
        return None

    def sync(self) -> dict[str, Any]:
        status = super().sync()
        self._sync_fallback()
        return status | {"fallback": self._describe(self.fallback)}

    def _sync_fallback(self) -> None:
        if self.fallback_name is None:
            return
        with self._switch:
            try:
                wanted = self.ws.registry().resolve(f"{self.fallback_name}@{CHAMPION}")[1]
            except Exception:
                wanted = None
            current = self.fallback.verified.version if self.fallback else None
            if wanted is None or wanted == current or wanted == self._refused_fallback:
                return
            verified = self._verify(wanted, FALLBACK)
            model = self._start_model(verified, FALLBACK, None) if verified is not None else None
            if model is None:
                self._refused_fallback = wanted
                return
            old, self.fallback = self.fallback, model
            if old is not None:
                old.close()
                old.verified.discard()
            self._share_cores()

    def close(self) -> None:
        fallback, self.fallback = self.fallback, None
        super().close()
        if fallback is not None:
            fallback.close()
            fallback.verified.discard()
        self.tracer.close()

    def status(self) -> dict[str, Any]:
        teams = {}
        for team in self.gateway.teams:
            spent, budget = self.meter.spend(team)
            teams[team] = {"spent_usd": round(spent, 6), "budget_usd": budget}
        return super().status() | {
            "fallback": self._describe(self.fallback),
            "teams": teams,
            "cache_entries": len(self.cache),
            "pids": {role: m.process.pid for role, m in self._processes()},
            "threads": {role: m.process.threads for role, m in self._processes()},
        }

    def _processes(self) -> list[tuple[str, ServedRelease]]:
        served = (("champion", self.champion), ("canary", self.canary), ("fallback", self.fallback))
        return [(role, model) for role, model in served if model is not None]

    @staticmethod
    def _describe(model: ServedRelease | None) -> dict[str, Any] | None:
        if model is None:
            return None
        v = model.verified
        return {"name": v.name, "version": v.version, "version_digest": v.version_digest, "signer": v.signer}

    def models(self) -> bytes:
        """``GET /v1/models``: the project's release and its fallback, when served."""
        served = [(self.name, self.champion), (self.fallback_name, self.fallback)]
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "conveyor",
                "conveyor": self._describe(model),
            }
            for name, model in served
            if name is not None and model is not None
        ]
        return json.dumps({"object": "list", "data": data}).encode()

    def document(self) -> dict[str, Any]:
        """The API's OpenAPI 3.1 document (``/docs.json``): OpenAI's paths, as this gateway takes them."""
        from conveyor.monitoring.feedback import FeedbackRow
        from conveyor.serving.openai_api import ChatRequest, CompletionRequest

        schemas: dict[str, Any] = {}
        for model in (ChatRequest, CompletionRequest, FeedbackRow):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas |= schema.pop("$defs", {})
            schemas[model.__name__] = schema
        answers = {
            "200": {"description": "the answer (JSON, or server-sent events with `stream: true`), and who served it"},
            "400": {"description": "a field the release cannot honour, named in `error.param`"},
            "401": {"description": "no valid API key"},
            "404": {"description": "a model this gateway does not serve"},
            "429": {"description": "over the key's or team's tokens per minute, or the team's budget"},
            "503": {"description": "no release could answer"},
        }

        def post(summary: str, name: str) -> dict[str, Any]:
            body = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
            }
            return {
                "post": {"summary": summary, "requestBody": body, "responses": answers, "security": [{"bearer": []}]}
            }

        return {
            "openapi": "3.1.0",
            "info": {"title": f"Conveyor gateway: {self.name}", "version": "1"},
            "paths": {
                "/v1/chat/completions": post("A chat answer from the release", "ChatRequest"),
                "/v1/completions": post("A completion from the release", "CompletionRequest"),
                "/v1/models": {"get": {"summary": "The releases served", "security": [{"bearer": []}]}},
                "/v1/feedback": post(
                    "A rating of an answer this key was given (request_id: the answer's id)", "FeedbackRow"
                ),
            },
            "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        }

    # -- requests -------------------------------------------------------------------------------------

    async def complete(self, body: bytes, caller: Role, *, chat: bool, send: Send, gone: asyncio.Event) -> None:
        """Answer one request; the response (JSON, or server-sent events) is written to ``send``."""
        arrived = time.perf_counter()
        request = parse_request(body, ChatRequest if chat else CompletionRequest)
        order = self._order(request, caller)
        team = self.meter.team_of(caller.team)
        first = order[0][0].verified
        limit = int(first.limits["max_output_tokens"])
        wanted = request.output_limit
        if wanted is not None and wanted > limit:
            field_name = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
            raise RequestRefused(
                400, f"{field_name}: at most {limit} for {first.name} (the release's limit)", param=field_name
            )
        prepared = prepare(request, first, chat)
        request_id = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
        if prepared.blocked_by is not None:
            outcome = Outcome(
                order[0][0],
                order[0][1],
                text=first.guardrails.policy.refusal,
                finish_reason="content_filter",
                blocked_by=prepared.blocked_by,
                refused=True,
                status="blocked",
                ttft_ms=0.0,
            )
            await send_whole(send, request.model, request_id, outcome, chat, stream=request.stream)
            self._finish(request_id, request, prepared, outcome, caller, team, None, arrived, chat)
            return
        max_cost = max(
            cost_of(prepared.reserve_tokens, int(prepared.params["max_tokens"]), m.verified.pricing) for m, _ in order
        )
        reservation = self.meter.reserve(
            caller.id or caller.name, team, prepared.reserve_tokens + int(prepared.params["max_tokens"]), max_cost
        )
        outcome = Outcome(None, order[0][1], status="failed", finish_reason="error")
        try:
            outcome = await self._respond(request, prepared, order, request_id, chat, send, gone, arrived)
        finally:
            tokens = outcome.prompt_tokens + outcome.completion_tokens
            cost = (
                0.0
                if outcome.cached or outcome.release is None
                else cost_of(outcome.prompt_tokens, outcome.completion_tokens, outcome.release.verified.pricing)
            )
            self.meter.settle(reservation, tokens, cost)
            self._finish(request_id, request, prepared, outcome, caller, team, cost, arrived, chat)

    def feedback(self, body: bytes, caller: Role) -> bytes:
        """Record a client's rating of an answer (``POST /v1/feedback``) for ``conveyor llm check``.

        The row is checked field by field and appended, with the key that posted it, to this
        worker's file of incoming feedback: it joins only an answer given to that key."""
        from pydantic import ValidationError

        from conveyor.monitoring.feedback import FeedbackRow

        try:
            document = json.loads(body)
            if not isinstance(document, dict):
                raise ValueError("the body is not a JSON object")
            document.pop("key", None)
            document.pop("at", None)
            row = FeedbackRow.model_validate(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "body"
            raise RequestRefused(400, f"{where}: {first['msg']}", param=where) from None
        except ValueError as exc:
            raise RequestRefused(400, f"the body is not a feedback object ({exc})") from None
        stamped = row.model_copy(update={"key": caller.id or caller.name, "at": datetime.now(UTC).isoformat()})
        line = stamped.model_dump_json(exclude_none=True) + "\n"
        with self._feedback_lock:
            self._feedback_dir.mkdir(parents=True, exist_ok=True)
            with (self._feedback_dir / f"gateway-{os.getpid()}.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(line)
        self.metrics.llm_feedback.labels(self.name, row.rating).inc()
        return json.dumps({"object": "feedback", "request_id": row.request_id, "status": "recorded"}).encode()

    def _order(self, request: Any, caller: Role) -> list[tuple[ServedRelease, str]]:
        """The releases that may answer, in the order they are tried."""
        champion, canary, fallback = self.champion, self.canary, self.fallback
        if request.model == self.fallback_name and fallback is not None:
            return [(fallback, FALLBACK)]
        if request.model != self.name:
            names = ", ".join(n for n in (self.name, self.fallback_name if fallback else None) if n)
            raise RequestRefused(
                404,
                f"model {request.model[:100]!r} is not served here (served: {names})",
                param="model",
                code="model_not_found",
            )
        if champion is None:
            if fallback is None:
                raise RequestRefused(503, "no verified release is loaded yet", kind="server_error")
            return [(fallback, FALLBACK)]
        order: list[tuple[ServedRelease, str]] = []
        if canary is not None and self.router.route(request.user or caller.id or caller.name) == "canary":
            order.append((canary, "canary"))
        order.append((champion, "champion"))
        if fallback is not None and self.gateway.fallback_attempts:
            order.append((fallback, FALLBACK))
        return order

    async def _respond(
        self,
        request: Any,
        prepared: Prepared,
        order: list[tuple[ServedRelease, str]],
        request_id: str,
        chat: bool,
        send: Send,
        gone: asyncio.Event,
        arrived: float,
    ) -> Outcome:
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
                outcome = Outcome(
                    model,
                    role,
                    text=release.guardrails.policy.refusal,
                    finish_reason="content_filter",
                    blocked_by=ready.blocked_by,
                    refused=True,
                    status="blocked",
                    fallbacks=fallbacks,
                )
                await send_whole(send, request.model, request_id, outcome, chat, stream=request.stream)
                return outcome
            key = self._cache_key(release, ready, chat)
            if key is not None and (hit := self.cache.get(key)) is not None:
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
                self.metrics.llm_cache.labels(release.name, release.version, "hit").inc()
                await send_whole(send, request.model, request_id, outcome, chat, stream=request.stream)
                return outcome
            try:
                first_token = (
                    self.gateway.canary_first_token_seconds if role == "canary" else self.gateway.first_token_seconds
                )
                outcome = await generate(
                    model,
                    role,
                    ready,
                    first_token_seconds=first_token,
                    total_seconds=self.gateway.total_seconds,
                    stream=stream,
                    gone=gone,
                    arrived=arrived,
                )
            except ModelFailed as exc:
                self._failed(model, role, exc)
                failures.append(f"{role} {release.name} version {release.version}: {exc.kind}")
                if stream is not None and stream.started:  # the client has part of the answer: it cannot be redone
                    await stream.error(f"the model failed while answering ({exc.kind}); the failure is recorded")
                    return Outcome(model, role, status="failed", fallbacks=fallbacks, finish_reason="error")
                fallbacks.append(role)
                continue
            outcome.fallbacks = fallbacks
            outcome.passages, outcome.retrieval_score = ready.passages, ready.retrieval_score
            if fallbacks:
                self.metrics.fallbacks.labels(self.name).inc()
                self.metrics.llm_fallbacks.labels(self.name, fallbacks[-1], role).inc()
            if key is not None and outcome.status == "ok":
                self.cache.put(key, cacheable(outcome))
                self.metrics.llm_cache.labels(release.name, release.version, "miss").inc()
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

    def _cache_key(self, release: VerifiedRelease, prepared: Prepared, chat: bool) -> str | None:
        if not self.gateway.cache.enabled or float(prepared.params.get("temperature", 0.0)) != 0.0:
            return None
        material = json.dumps([release.version_digest, chat, prepared.request, prepared.params], sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()

    # -- after the answer ----------------------------------------------------------------------------

    def _finish(
        self,
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
        """Count, observe, log and trace a request (the log and the trace are written off the request path)."""
        duration = time.perf_counter() - arrived
        release = outcome.release.verified if outcome.release is not None else None
        name, version = (release.name, release.version) if release else (request.model, "?")
        labels = (name, version, outcome.role)
        m = self.metrics
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
            question=prepared.question if self.gateway.log_text and prepared.blocked_by is None else None,
            answer=outcome.text if self.gateway.log_text else None,
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
        self.controller.observe(outcome.role, ok=True, latency_ms=outcome.model_ms, signals=signals)
        if outcome.role == "canary":
            self._canary_seen += 1
            if self._canary_seen % 5 == 0:
                self._wake.set()

    def _spent_so_far(self) -> dict[tuple[str, str], float]:
        """Each team's spend in its current budget period, from the inference log (this worker's share)."""
        try:
            return spent_in_log(self.ws.inference_dir(self.name), self.gateway, share=self._share)
        except Exception:
            log.exception("could not read the inference log for the teams' spend; starting from zero")
            return {}
