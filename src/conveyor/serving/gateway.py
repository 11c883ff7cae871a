"""The LLM gateway: the OpenAI API, a front end on the serving core.

The same core as for tabular models (``serving.core``): the leader follows the registry's
``champion`` and ``canary`` aliases, every release is verified before it is loaded (signature,
provenance, the weights' digest) and again on every switch, each runs on a runtime of its own
(``serving.releases.ReleaseLoader``), the canary's weight walks ``policies/canary.yaml`` (its
``llm`` section) and is judged on its answers' signals; a rollback or a promotion is recorded as
for any model. The project's ``fallback`` release (its own ``@champion``) is loaded beside them.

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

Its steps are modules of their own: preparing a request for a release (``serving.prepare``),
routing (``ServingCore.order``), answering (``serving.respond``, ``serving.answer``), the
answer on the wire (``serving.stream``), settling (``serving.settle``), with the exact cache
(``serving.answer_cache``) and the tokens' accounting (``serving.meter``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from conveyor.policies.errors import RequestRefused
from conveyor.policies.gateway import GatewayPolicy
from conveyor.registry.inference_log import FeedbackRow, InferenceLog
from conveyor.registry.workspace import Workspace
from conveyor.serving.answer_cache import AnswerCache
from conveyor.serving.auth import Role
from conveyor.serving.canary import LlmCanaryController
from conveyor.serving.core import FALLBACK, ServingCore
from conveyor.serving.meter import Meter, cost_of, spent_in_log
from conveyor.serving.openai_api import ChatRequest, CompletionRequest, parse_request
from conveyor.serving.prepare import prepare
from conveyor.serving.releases import ReleaseLoader, ServedRelease
from conveyor.serving.respond import blocked, respond
from conveyor.serving.runtime import GenerateRuntime
from conveyor.serving.settle import Settler
from conveyor.serving.stream import Outcome, Send, send_whole
from conveyor.serving.tracing import Tracer

__all__ = ["Gateway"]

log = logging.getLogger("conveyor.serving")

_COMPLETIONS = {"/v1/chat/completions": True, "/v1/completions": False}  # path -> chat


class Gateway:
    """The OpenAI API on the serving core of an LLM project: its releases as champion, canary and fallback."""

    paths: dict[str, set[str]] = {  # noqa: RUF012
        "/v1/chat/completions": {"POST"},
        "/v1/completions": {"POST"},
        "/v1/models": {"GET"},
        "/v1/feedback": {"POST"},
        "/metrics": {"GET"},
    }

    def __init__(self, ws: Workspace) -> None:
        project = ws.llm_project()
        self.name, self.fallback_name = project.name, project.fallback
        self.gateway: GatewayPolicy = ws.gateway_policy()
        self.core: ServingCore[GenerateRuntime] = ServingCore(
            ws,
            self.name,
            ReleaseLoader(ws, max_waiting=self.gateway.max_waiting),
            controller_class=LlmCanaryController,
            fallback_name=self.fallback_name,
        )
        share = self.core.access.share
        self.meter = Meter(self.gateway, share=share, spent=_spent_so_far(ws, self.name, self.gateway, share))
        self.cache = AnswerCache(self.gateway.cache.max_entries, self.gateway.cache.ttl_seconds)
        self.log = InferenceLog(ws.inference_dir(self.name))
        self.tracer = Tracer(ws.home / "serving" / "traces", service=self.name)
        self.settler = Settler(
            self.core, self.meter, self.log, self.tracer, self.core.controller.policy.llm.score_share
        )
        self._feedback_dir = ws.home / "feedback" / self.name / "incoming"
        self._feedback_lock = threading.Lock()

    def start(self) -> None:
        self.core.start()

    def close(self) -> None:
        """Stop the core (its releases' processes), then write out the inference log and the traces."""
        self.core.close()
        self.log.close()
        self.tracer.close()

    def status(self) -> dict[str, Any]:
        teams = {}
        for team in self.gateway.teams:
            spent, budget = self.meter.spend(team)
            teams[team] = {"spent_usd": round(spent, 6), "budget_usd": budget}
        served = [(role, m) for role, m in self.core.served() if m is not None]
        return self.core.status() | {
            "teams": teams,
            "cache_entries": len(self.cache),
            "pids": {role: m.runtime.pid for role, m in served},
            "threads": {role: m.runtime.threads for role, m in served},
        }

    # -- requests -------------------------------------------------------------------------------------

    async def handle(self, path: str, body: bytes, caller: Role, receive: Any, send: Send) -> bytes | None:
        """The body of ``path``'s answer; None when it was written to ``send`` (a completion) or is
        not this front end's (left to BentoML)."""
        if path in _COMPLETIONS:
            self.core.access.admit(caller)
            gone = asyncio.Event()

            async def watch() -> None:  # a client that leaves is noticed: its generation stops
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone.set()

            watcher = asyncio.get_running_loop().create_task(watch())
            try:
                await self.complete(body, caller, chat=_COMPLETIONS[path], send=send, gone=gone)
            finally:
                watcher.cancel()
            return None
        if path == "/v1/feedback":
            self.core.access.admit(caller)
            return self.feedback(body, caller)
        if path == "/v1/models":
            return self.models()
        return None

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
            outcome = blocked(order[0][0], order[0][1], prepared, ttft_ms=0.0)
            await send_whole(send, request.model, request_id, outcome, chat, stream=request.stream)
            self.settler.record(self.gateway, request_id, request, prepared, outcome, caller, team, None, arrived, chat)
            return
        max_tokens = int(prepared.params["max_tokens"])
        max_cost = max(cost_of(prepared.reserve_tokens, max_tokens, m.verified.pricing) for m, _ in order)
        reservation = self.meter.reserve(caller.id or caller.name, team, prepared.reserve_tokens + max_tokens, max_cost)
        outcome = Outcome(None, order[0][1], status="failed", finish_reason="error")
        try:
            outcome = await respond(
                self.core,
                self.gateway,
                self.cache,
                request,
                prepared,
                order,
                request_id=request_id,
                chat=chat,
                send=send,
                gone=gone,
                arrived=arrived,
            )
        finally:
            cost = self.settler.settle(reservation, outcome)
            self.settler.record(self.gateway, request_id, request, prepared, outcome, caller, team, cost, arrived, chat)

    def _order(self, request: Any, caller: Role) -> list[tuple[ServedRelease, str]]:
        """The releases that may answer, in the order they are tried (the canary sticky per user or key)."""
        fallback = self.core.fallback
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
        order = self.core.order(request.user or caller.id or caller.name, fallback=bool(self.gateway.fallback_attempts))
        if not order:
            raise RequestRefused(503, "no verified release is loaded yet", kind="server_error")
        return order

    def feedback(self, body: bytes, caller: Role) -> bytes:
        """Record a client's rating of an answer (``POST /v1/feedback``) for ``conveyor llm check``.

        The row is checked field by field and appended, with the key that posted it, to this
        worker's file of incoming feedback: it joins only an answer given to that key."""
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
        self.core.metrics.llm_feedback.labels(self.name, row.rating).inc()
        return json.dumps({"object": "feedback", "request_id": row.request_id, "status": "recorded"}).encode()

    def models(self) -> bytes:
        """``GET /v1/models``: the project's release and its fallback, when served."""
        served = [(self.name, self.core.champion), (self.fallback_name, self.core.fallback)]
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "conveyor", "conveyor": model.describe()}
            for name, model in served
            if name is not None and model is not None
        ]
        return json.dumps({"object": "list", "data": data}).encode()

    def document(self) -> dict[str, Any]:
        """The API's OpenAPI 3.1 document (``/docs.json``): OpenAI's paths, as this gateway takes them."""

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


def _spent_so_far(ws: Workspace, name: str, policy: GatewayPolicy, share: float) -> dict[tuple[str, str], float]:
    """Each team's spend in its current budget period, from the inference log (this worker's share)."""
    try:
        return spent_in_log(ws.inference_dir(name), policy, share=share)
    except Exception:
        log.exception("could not read the inference log for the teams' spend; starting from zero")
        return {}
