"""The tabular front end: ``POST /predict`` on the serving core, and how a tabular model is loaded.

``TabularLoader`` verifies a registered version (``serving.models.load_verified``) and runs its
estimator in a child process of its own (``ModelProcess``; the spare process when there is one).
A canary must take the champion's columns: clients could not call both otherwise.

``TabularEndpoint`` answers a request: checked against the champion's signature and input
contract (categories), routed (sticky per key), answered, checked against the output contract,
and logged off the request path. Whatever fails after routing, up to the built response and its
log rows, is the fault of the model that answered: a canary's request is then answered by the
champion and the fault counts against the canary (a contract breach rolls it back at once); a
champion's fault is a 500, counted and recorded. Nothing that breaks the contract reaches a
client or the inference log.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from conveyor.policies.errors import ModelFailed, RequestRefused
from conveyor.registry.inference_log import InferenceLog, LogEntry
from conveyor.registry.release import CANARY
from conveyor.registry.workspace import Workspace
from conveyor.serving.auth import Role
from conveyor.serving.canary import CanaryController
from conveyor.serving.core import ServingCore
from conveyor.serving.models import ModelProcess, VerifiedModel, load_verified
from conveyor.serving.runtime import Served
from conveyor.serving.schema import request_model
from conveyor.serving.spare import warm_pool

__all__ = ["TabularEndpoint", "TabularLoader"]

_PREDICT_TIMEOUT = 30  # seconds, as BentoML's traffic timeout for what passes through to it


class TabularLoader:
    """A tabular model's versions: verified by ``load_verified``, run by ``ModelProcess``."""

    llm = False
    judge_every = 20  # canary requests between two judgements
    stopping_grace = 3.0  # a Ctrl-C reaches the model process too: wait to learn whether the service stops

    def __init__(self, ws: Workspace, *, spare: Any = None) -> None:
        self.ws, self.spare = ws, spare  # a model process started before the first model is verified
        project = ws.project()
        self.task = project.task
        self.context = (project.entity_key, project.event_timestamp)  # logged beside the inputs, not inputs
        self.max_rows = ws.serving_policy().max_rows
        self.columns: list[Any] = []
        self.request_model: Any = None  # the pydantic model of a request for the champion's signature

    def verify(self, name: str, version: str, ledger: Any) -> VerifiedModel:
        ws = self.ws
        return load_verified(
            f"{name}/{version}",
            policy=ws.signing(),
            root=ws.root,
            keys_dir=ws.keys_dir,
            ledger=ledger,
            task=self.task,
            workspace=ws.home / "serving" / "models",
            loadable=ws.loadable_types(),
        )

    def open(self, verified: VerifiedModel, role: str, timeout: float | None) -> ModelProcess:
        spare, self.spare = self.spare, None
        return ModelProcess(verified, timeout=timeout, pool=spare)

    def fits(self, verified: VerifiedModel) -> str | None:
        if list(verified.columns) != self.columns:
            return "its input columns differ from the champion's: clients could not call both"
        return None

    def accepted(self, verified: VerifiedModel) -> None:
        self.columns = list(verified.columns)
        self.request_model = request_model(self.columns, max_rows=self.max_rows, context=self.context)

    def arranged(self, routed: list[Served[ModelProcess]], fallback: Served[ModelProcess] | None) -> None:
        pass  # each model process has one BLAS thread: nothing to share out

    def close(self) -> None:
        if self.spare is not None:
            self.spare.shutdown(wait=False, cancel_futures=True)


class TabularEndpoint:
    paths: dict[str, set[str]] = {"/predict": {"POST"}, "/metrics": {"GET"}, "/docs.json": {"GET"}}  # noqa: RUF012

    def __init__(self, ws: Workspace, *, spare: Any = None) -> None:
        self.loader = TabularLoader(ws, spare=spare)
        self.core: ServingCore[ModelProcess] = ServingCore(
            ws, ws.project().model_name, self.loader, controller_class=CanaryController
        )
        self.name = self.core.name
        self.log = InferenceLog(ws.inference_dir(self.name))
        self._paired_share = ws.canary_policy().latency.paired_share
        self._pairing = random.Random()
        self._pending: set[asyncio.Task] = set()

    def start(self) -> None:
        if self.loader.spare is None:
            self.loader.spare = warm_pool()  # its imports overlap the champion's verification
        self.core.start()

    def close(self) -> None:
        """Stop the core (its models' processes), then write out the inference log."""
        self.core.close()
        self.log.close()

    def status(self) -> dict[str, Any]:
        return self.core.status()

    async def handle(self, path: str, body: bytes, caller: Role, receive: Any, send: Any) -> bytes | None:
        """The body of ``path``'s answer (``POST /predict``); None for a path this front end leaves to BentoML."""
        if path != "/predict":
            return None
        self.core.access.admit(caller)
        try:
            return await asyncio.wait_for(self.predict(body), _PREDICT_TIMEOUT)
        except TimeoutError:
            raise RequestRefused(504, f"no answer within {_PREDICT_TIMEOUT} s") from None

    async def predict(self, body: bytes) -> bytes:
        """The JSON answer to a predict request's body: by the canary when routed there and it
        succeeds, by the champion otherwise."""
        core, request_model = self.core, self.loader.request_model
        if core.champion is None or request_model is None:
            raise RequestRefused(503, "no verified champion is loaded yet")
        rows, key = self._rows(request_model, body)
        flags = self._categories(core.champion.verified, rows)
        for model, role in core.order(key, fallback=False):
            if role != CANARY:
                model = core.champion or model  # the champion now: it may have switched while the canary answered
            try:
                return await self._answer(model, role, rows, flags)
            except ModelFailed as exc:
                core.failed(model, role, exc)
                if role == CANARY:
                    core.metrics.fallbacks.labels(self.name).inc()
        raise RequestRefused(500, "the model failed to answer; the failure is recorded")

    def _rows(self, request_model: Any, body: bytes) -> tuple[list[dict[str, Any]], str | None]:
        """The request checked against the champion's signature: one plain dict per row, and the routing key."""
        try:
            request = request_model.model_validate_json(body)
        except ValidationError as exc:
            self.core.metrics.client_errors.labels("invalid").inc()
            problems = "; ".join(_problem(e) for e in exc.errors()[:10])
            raise RequestRefused(400, f"invalid request: {problems}") from None
        return [row.__dict__ for row in request.rows], request.key

    def _categories(self, verified: VerifiedModel, rows: list[dict[str, Any]]) -> list[str | None]:
        """Per row, the flag for values the model never saw (None: none); 400 unless the policy flags them."""
        unknown = verified.contract.unknown(rows)
        flags: list[str | None] = [None] * len(rows)
        if not unknown:
            return flags
        for _, column, _ in unknown:
            self.core.metrics.unknown_categories.labels(self.name, column).inc()
        if self.core.serving.unknown_categories == "refuse":
            self.core.metrics.client_errors.labels("invalid").inc()
            problems = "; ".join(verified.contract.explain(*u) for u in unknown[:5])
            raise RequestRefused(400, f"invalid request: {problems}")
        for row, column, _ in unknown:
            flags[row] = ",".join(filter(None, [flags[row], f"unknown:{column}"]))
        return flags

    async def _answer(
        self, model: Served[ModelProcess], role: str, rows: list[dict[str, Any]], flags: list[str | None]
    ) -> bytes:
        """``model``'s answer as the response body, its rows logged; ``ModelFailed`` for anything that
        goes wrong from the call to the logged answer."""
        version = model.verified.version
        answer = await model.runtime.predict(rows)
        try:
            request_id = uuid.uuid4().hex
            predictions = [float(v) for v in answer.values]
            body = json.dumps(
                {
                    "request_id": request_id,
                    "model": self.name,
                    "version": version,
                    "served_by": role,
                    "predictions": predictions,
                },
                allow_nan=False,
            ).encode()
            entries = self._entries(request_id, rows, model, predictions, role, flags)
        except Exception as exc:
            raise ModelFailed(f"its answer could not be built: {type(exc).__name__}: {exc}", "contract") from None
        self.log.record_all(entries)
        metrics, labels = self.core.metrics, (self.name, version, role)
        metrics.requests.labels(*labels).inc()
        metrics.latency.labels(*labels).observe(answer.model_ms / 1000)
        self.core.observed(role, latency_ms=answer.cpu_ms, predictions=predictions)
        champion = self.core.champion
        if role == CANARY and champion is not None and self._pairing.random() < self._paired_share:
            task = asyncio.get_running_loop().create_task(self._paired(champion, rows))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return body

    async def _paired(self, champion: Served[ModelProcess], rows: list[dict[str, Any]]) -> None:
        """The champion's time for the rows the canary just answered (the analysis' same-work reference)."""
        try:
            model_ms = await champion.runtime.time_call(rows)
        except ModelFailed:
            return  # the champion's own calls count its failures
        self.core.controller.observe("paired", ok=True, latency_ms=model_ms)

    def _entries(
        self,
        request_id: str,
        rows: list[dict[str, Any]],
        model: Served[ModelProcess],
        predictions: list[float],
        served_by: str,
        flags: list[str | None],
    ) -> list[LogEntry]:
        now = datetime.now(UTC)
        entity_key, event_time = self.loader.context
        inputs = [c.name for c in self.loader.columns]
        entries = []
        for i, (row, prediction, flag) in enumerate(zip(rows, predictions, flags, strict=True)):
            entity, at = row.get(entity_key), row.get(event_time)
            entries.append(
                LogEntry(
                    request_id,
                    now,
                    self.name,
                    model.verified.version,
                    {name: row.get(name) for name in inputs},
                    prediction,
                    served_by,
                    i,
                    None if entity is None else str(entity),
                    None if at is None else str(at),
                    model.deployment,
                    flag,
                )
            )
        return entries

    def document(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of ``POST /predict``, from the champion's request model."""
        model = self.loader.request_model
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}") if model is not None else {}
        components = schema.pop("$defs", {})
        answers = {
            "200": {"description": "one prediction per row"},
            "400": {"description": "the request does not match the model's inputs"},
            "401": {"description": "no valid API key"},
            "413": {"description": "the body is too large"},
            "429": {"description": "over the key's rate"},
        }
        predict = {
            "summary": "Predictions for rows, with the model version that answered",
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": answers,
            "security": [{"bearer": []}],
        }
        return {
            "openapi": "3.1.0",
            "info": {"title": f"Conveyor: {self.name}", "version": "1"},
            "paths": {"/predict": {"post": predict}},
            "components": {
                "schemas": components,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
        }


def _problem(error: Any) -> str:
    where = ".".join(map(str, error["loc"])) or "body"
    return f"{where}: {error['msg']}"
