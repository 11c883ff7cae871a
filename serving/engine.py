"""The serving engine: what the service does, without the HTTP around it.

It holds the champion and the canary, each in a child process of its own and loaded only after
``verify`` passed. The leading worker watches the registry's ``champion`` and ``canary`` aliases,
loads what they point at and publishes it in the workers' shared state; every worker serves what
is published (verifying it itself). A version that does not verify is refused, logged, recorded
in the ledger, and the engine keeps serving what it had.

A request is checked against the champion's signature and input contract (categories), routed
(sticky per key), answered, checked against the output contract, and logged off the request
path. Whatever fails after routing, up to the built response and its log rows, is the fault of
the model that answered: a canary's request is then answered by the champion and the fault
counts against the canary (a contract breach rolls it back at once); a champion's fault is a 500,
counted and recorded. Nothing that breaks the contract reaches a client or the inference log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from conveyor.policies.canary import Verdict
from conveyor.policies.errors import LoadRefused, ModelFailed, NotFound, RequestRefused
from conveyor.policies.serving import ServingPolicy
from conveyor.registry.digests import json_digest
from conveyor.registry.events import EventKind
from conveyor.registry.inference_log import InferenceLog, LogEntry
from conveyor.registry.ledger import utc_now
from conveyor.registry.release import CANARY, CHAMPION, promote, retire_canary
from conveyor.registry.workspace import Workspace
from conveyor.serving.auth import RateLimiter, Role, open_api_keys
from conveyor.serving.canary import CanaryController
from conveyor.serving.metrics import ServiceMetrics
from conveyor.serving.models import (
    ModelProcess,
    VerifiedModel,
    load_verified,
    warm_pool,
)
from conveyor.serving.router import Router
from conveyor.serving.runtime import Answer
from conveyor.serving.schema import request_model
from conveyor.serving.shared import open_shared_state

__all__ = ["Engine", "RequestRefused"]

log = logging.getLogger("conveyor.serving")

_EVALUATE_EVERY = 20  # canary requests between two judgements (every canary failure is judged at once)
_SHARED_EVERY = 0.2  # seconds between two reads of the shared state (weight, desired models)
_STOPPING_GRACE = 3.0  # seconds a failed model load waits to learn whether the service is stopping
_FAULT_RECORD_SECONDS = 60.0  # at most one ledger record a minute per deployment and kind of fault


class Engine:
    controller_class = CanaryController
    paths: dict[str, set[str]] = {"/predict": {"POST"}, "/metrics": {"GET"}, "/docs.json": {"GET"}}  # noqa: RUF012
    serves_llm = False  # a tabular model's metrics (the gateway: an LLM release's)

    def __init__(self, ws: Workspace, *, spare: Any = None) -> None:
        self._instance = uuid.uuid4().hex  # this worker: tells two deployments of one version apart
        self.ws = ws
        self._read_project(ws)  # read once: nothing on the request path reads a file
        self.serving: ServingPolicy = ws.serving_policy()
        self.ledger = ws.ledger()  # held for the service's life, closed by ``close``
        self.router = Router(0)
        self.state = open_shared_state(ws.home, ws.settings.service_run, self.name, ws.settings.redis_url)
        self.controller = self.controller_class(
            self.state,
            self.router,
            ws.canary_policy(),
            on_promote=self._canary_passed,
            on_rollback=self._canary_failed,
            worker=self._instance,
        )
        self.metrics = ServiceMetrics()
        self.metrics.start(self.name, llm=self.serves_llm)
        # A file's stat() is cheap on the request path; Redis is read by _follow only, off it.
        shared_keys = ws.settings.redis_url is not None
        self.keys = open_api_keys(ws, background=True, recheck=_SHARED_EVERY) if shared_keys else open_api_keys(ws)
        workers = self.serving.workers  # each worker takes its share of every key's rate
        limit = self.serving.rate_limit
        self._share = 1 / workers
        self.limiter = RateLimiter(limit.per_second / workers, max(1, limit.burst // workers))
        failed = self.serving.failed_auth_limit
        self.failures = RateLimiter(failed.per_second / workers, max(1, failed.burst // workers))
        self.log = InferenceLog(ws.inference_dir(self.name))
        self.champion: ModelProcess | None = None
        self.canary: ModelProcess | None = None
        self._request_model: Any = None
        self._columns: list[Any] = []
        self._refused: dict[str, str] = {}  # role -> version last refused (not retried until the alias moves)
        self._switch = threading.RLock()  # one model switch at a time
        self._applied = -1  # the epoch of the desired models this worker serves
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._canary_seen = 0
        self._said_not_ready = False
        self._paired_share = ws.canary_policy().latency.paired_share
        self._pairing = random.Random()
        self._pending: set[asyncio.Task] = set()
        self._spare: Any = spare  # a model process started before the first model is verified
        self._faults: dict[tuple[str, str], list[float]] = {}  # (deployment, kind) -> [last record, failures since]
        self._threads: list[threading.Thread] = []

    def _read_project(self, ws: Workspace) -> None:
        project = ws.project()
        self.name = project.model_name
        self._task = project.task
        # The row fields that are not model inputs but are logged: entity key and event time.
        self._context = (project.entity_key, project.event_timestamp)

    def _warm(self) -> Any:
        return warm_pool()  # a model process whose imports overlap the champion's verification

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load what the aliases say, then keep following them (and the other workers)."""
        if self._spare is None:
            self._spare = self._warm()
        self._shared_tick()
        for name, target in (
            ("shared-state", self._follow),
            ("canary-analyst", self._analyse),
            ("alias-watcher", self._watch),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop the background threads and the models' processes; write out the inference log."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        with self._switch:
            self.controller.flush()
            if self._spare is not None:
                self._spare.shutdown(wait=False, cancel_futures=True)
            for model in (self.champion, self.canary):
                if model is not None:
                    model.close()
                    model.verified.discard()
        self.log.close()
        self.ledger.close()
        self.state.close()
        self.keys.close()

    @property
    def ready(self) -> bool:
        return self.champion is not None

    @property
    def request_model(self) -> Any:
        """The pydantic model of a predict request for the champion's signature (None before one is loaded)."""
        return self._request_model

    # -- requests ---------------------------------------------------------------------------------

    def authorize(self, token: str | None, *, admin: bool = False, client: str = "?") -> Role:
        """The caller's role; 401 without a valid key (429 past the address's failures), 403 for a
        predict key at an admin endpoint, 429 over the key's rate."""
        role = self.keys.check(token)
        if role is None:
            if admin or self.serving.api_keys_required or token:
                if not self.failures.allow(client):
                    self.metrics.client_errors.labels("auth_limited").inc()
                    raise RequestRefused(429, "too many requests with a wrong key from this address; retry later")
                self.metrics.client_errors.labels("unauthorized").inc()
                raise RequestRefused(401, "a valid API key is required (header `Authorization: Bearer <key>`)")
            role = Role("anonymous", admin=False)
        if admin and not role.admin:
            self.metrics.client_errors.labels("forbidden").inc()
            raise RequestRefused(403, f"the key of {role.name!r} is not an admin key")
        return role

    def admit(self, role: Role) -> None:
        """A predict request's place in its key's rate (429 over it)."""
        rate = role.per_second * self._share if role.per_second else None
        burst = max(1, int(role.burst * self._share)) if role.burst else None
        if not self.limiter.allow(role.name, rate=rate, burst=burst):
            self.metrics.client_errors.labels("rate_limited").inc()
            shown = role.per_second or self.serving.rate_limit.per_second
            raise RequestRefused(429, f"rate limit of {shown:g} requests/s for {role.name!r} exceeded; retry later")

    async def predict(self, body: bytes) -> bytes:
        """The JSON answer to a predict request's body: by the canary when routed there and it
        succeeds, by the champion otherwise."""
        champion, canary, request_model = self.champion, self.canary, self._request_model
        if champion is None or request_model is None:
            raise RequestRefused(503, "no verified champion is loaded yet")
        rows, key = self._rows(request_model, body)
        flags = self._categories(champion.verified, rows)
        if canary is not None and self.router.route(key) == "canary":
            try:
                return await self._answer(canary, "canary", rows, flags)
            except ModelFailed as exc:
                self._failed(canary, "canary", exc)
                self.metrics.fallbacks.labels(self.name).inc()
        champion = self.champion or champion  # the champion now: it may have switched while the canary answered
        try:
            return await self._answer(champion, "champion", rows, flags)
        except ModelFailed as exc:
            self._failed(champion, "champion", exc)
            raise RequestRefused(500, "the model failed to answer; the failure is recorded") from None

    def _rows(self, request_model: Any, body: bytes) -> tuple[list[dict[str, Any]], str | None]:
        """The request checked against the champion's signature: one plain dict per row, and the routing key."""
        try:
            request = request_model.model_validate_json(body)
        except ValidationError as exc:
            self.metrics.client_errors.labels("invalid").inc()
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
            self.metrics.unknown_categories.labels(self.name, column).inc()
        if self.serving.unknown_categories == "refuse":
            self.metrics.client_errors.labels("invalid").inc()
            problems = "; ".join(verified.contract.explain(*u) for u in unknown[:5])
            raise RequestRefused(400, f"invalid request: {problems}")
        for row, column, _ in unknown:
            flags[row] = ",".join(filter(None, [flags[row], f"unknown:{column}"]))
        return flags

    async def _answer(
        self, model: ModelProcess, role: str, rows: list[dict[str, Any]], flags: list[str | None]
    ) -> bytes:
        """``model``'s answer as the response body, its rows logged; ``ModelFailed`` for anything that
        goes wrong from the call to the logged answer."""
        labels = (self.name, model.verified.version, role)
        answer: Answer = await model.predict(rows)
        try:
            request_id = uuid.uuid4().hex
            predictions = [float(v) for v in answer.values]
            body = json.dumps(
                {
                    "request_id": request_id,
                    "model": self.name,
                    "version": model.verified.version,
                    "served_by": role,
                    "predictions": predictions,
                },
                allow_nan=False,
            ).encode()
            entries = self._entries(request_id, rows, model, predictions, role, flags)
        except Exception as exc:
            raise ModelFailed(f"its answer could not be built: {type(exc).__name__}: {exc}", "contract") from None
        self.log.record_all(entries)
        self.metrics.requests.labels(*labels).inc()
        self.metrics.latency.labels(*labels).observe(answer.model_ms / 1000)
        self.controller.observe(role, ok=True, latency_ms=answer.cpu_ms, predictions=predictions)
        if role == "canary":
            self._canary_seen += 1
            if self._canary_seen % _EVALUATE_EVERY == 0:
                self._wake.set()
            if self.champion is not None and self._pairing.random() < self._paired_share:
                task = asyncio.get_running_loop().create_task(self._paired(self.champion, rows))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        return body

    async def _paired(self, champion: ModelProcess, rows: list[dict[str, Any]]) -> None:
        """The champion's time for the rows the canary just answered (the analysis' same-work reference)."""
        try:
            model_ms = await champion.time_call(rows)
        except ModelFailed:
            return  # the champion's own calls count its failures
        self.controller.observe("paired", ok=True, latency_ms=model_ms)

    def _failed(self, model: Any, role: str, exc: ModelFailed) -> None:
        """A model's failure: counted, judged at once for a canary, recorded (at most once a minute per kind)."""
        version = model.verified.version
        log.warning("%s version %s failed a request (%s): %s", role, version, exc.kind, exc)
        labels = (self.name, version, role)
        self.metrics.requests.labels(*labels).inc()
        self.metrics.errors.labels(*labels).inc()
        if exc.kind == "contract":
            self.metrics.contract_breaches.labels(*labels).inc()
        self.controller.observe(role, ok=False, kind=exc.kind, latency_ms=0.0)
        if role == "canary":
            self._wake.set()
        self._record_fault(model, role, exc)

    def _record_fault(self, model: Any, role: str, exc: ModelFailed) -> None:
        if model.deployment is None or self._stop.is_set():
            return
        now = time.monotonic()
        last, failures = self._faults.get((model.deployment, exc.kind), (float("-inf"), 0))
        failures += 1
        if now - last < _FAULT_RECORD_SECONDS:
            self._faults[(model.deployment, exc.kind)] = [last, failures]
            return
        self._faults[(model.deployment, exc.kind)] = [now, 0]
        details = {
            "name": self.name,
            "version": model.verified.version,
            "role": role,
            "kind": exc.kind,
            "reason": str(exc)[:500],
            "failures": failures,
        }
        threading.Thread(
            target=self._append_quietly,
            args=(EventKind.MODEL_FAULT, {"deployment": model.deployment}, details),
            name="record-fault",
            daemon=True,
        ).start()

    def _append_quietly(self, kind: EventKind, inputs: dict[str, str], details: dict[str, Any]) -> None:
        try:
            with self.ws.ledger() as ledger:
                ledger.append(kind, inputs=inputs, outputs=[], details=details)
        except Exception:
            log.exception("could not record %s", kind)

    def _entries(
        self,
        request_id: str,
        rows: list[dict[str, Any]],
        model: ModelProcess,
        predictions: list[float],
        served_by: str,
        flags: list[str | None],
    ) -> list[LogEntry]:
        now = datetime.now(UTC)
        entity_key, event_time = self._context
        inputs = [c.name for c in self._columns]
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

    # -- admin ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        def describe(model: ModelProcess | None) -> dict[str, Any] | None:
            if model is None:
                return None
            v = model.verified
            return {"version": v.version, "version_digest": v.version_digest, "signer": v.signer}

        return {
            "model": self.name,
            "ready": self.ready,
            "champion": describe(self.champion),
            "canary": describe(self.canary),
            "analysis": self.controller.status(),
            "refused": dict(self._refused),
            "workers": self.serving.workers,
            "policy": self.ws.canary_policy().model_dump(),
        }

    def set_weight(self, weight: float, hold: bool = False) -> dict[str, Any]:
        """Move the canary's weight for every worker (any worker may be asked)."""
        if not 0 <= weight <= 100:
            raise RequestRefused(400, f"weight must be between 0 and 100, not {weight}")
        if self.state.canary().state != "running":
            raise RequestRefused(409, "no canary is being served; promote a version to canary first")
        try:
            self.controller.set_weight(weight, hold=hold)
        except ValueError as exc:
            raise RequestRefused(409, str(exc)) from None
        self.metrics.weight.labels(self.name).set(weight / 100)
        return self.status()

    def abort(self, reason: str) -> dict[str, Any]:
        if self.state.canary().state != "running":
            raise RequestRefused(409, "no canary is being served")
        self.controller.abort(f"aborted by an admin: {reason}")
        return self.status()

    # -- models -----------------------------------------------------------------------------------

    def sync(self) -> dict[str, Any]:
        """Load what the ``champion`` and ``canary`` aliases point at now, if it changed, and publish
        it for the other workers (the leader does so every ``watch_seconds``, any worker on ``/admin/reload``)."""
        with self._switch:
            wanted_champion = self._alias(CHAMPION)
            current = self.champion.verified.version if self.champion else None
            if (
                wanted_champion is not None
                and wanted_champion != current
                and self._refused.get(CHAMPION) != wanted_champion
            ):
                self._load_champion(wanted_champion)
            if self.champion is None and not self._said_not_ready:
                self._said_not_ready = True  # once: the watch asks again every few seconds
                why = (
                    f"@champion (version {wanted_champion}) was refused at load: see the ledger's model.load_refused"
                    if wanted_champion is not None
                    else f"{self.name} has no @champion (promote one: `conveyor promote {self.name}/<version> --to champion`)"
                )
                log.warning("not ready: %s; checking the registry every %g s", why, self.serving.watch_seconds)
            elif self.champion is not None:
                self._said_not_ready = False
            wanted_canary = self._alias(CANARY)
            if wanted_canary == (self.champion.verified.version if self.champion else None):
                wanted_canary = None  # a canary that is already champion has nothing left to prove
            current = self.canary.verified.version if self.canary else None
            if wanted_canary != current and self._refused.get(CANARY) != wanted_canary:
                self._stop_canary()
                if wanted_canary is not None and self.champion is not None:
                    self._load_canary(wanted_canary)
            self._publish()
        return self.status()

    def _alias(self, name: str) -> str | None:
        """The version ``name`` points at, read as verification reads the registry (no MLflow import on the embedded store)."""
        try:
            return self.ws.registry().resolve(f"{self.name}@{name}")[1]
        except NotFound:
            return None

    def _publish(self) -> None:
        """What this worker serves is what every worker must serve."""
        desired = self.state.set_desired(
            self.champion.verified.version if self.champion else None,
            self.canary.verified.version if self.canary else None,
        )
        self._applied = desired.epoch
        if self.canary is not None:
            self.controller.start(self.canary.verified.version)
            self.metrics.weight.labels(self.name).set(self.router.weight / 100)

    def _follow_desired(self) -> None:
        """Serve the models the leader published, if they changed."""
        if self.state.desired().epoch == self._applied:
            return
        with self._switch:
            desired = self.state.desired()  # again, under the lock: a switch may have published meanwhile
            if desired.epoch == self._applied:
                return
            current = self.champion.verified.version if self.champion else None
            if desired.champion is not None and desired.champion != current:
                self._load_champion(desired.champion)
            current = self.canary.verified.version if self.canary else None
            if desired.canary != current:
                self._stop_canary()
                if desired.canary is not None and self.champion is not None:
                    self._load_canary(desired.canary)
            self._applied = desired.epoch

    def _verify(self, version: str, role: str) -> VerifiedModel | None:
        ws = self.ws
        try:
            return load_verified(
                f"{self.name}/{version}",
                policy=ws.signing(),
                root=ws.root,
                keys_dir=ws.keys_dir,
                ledger=self.ledger,
                task=self._task,
                workspace=ws.home / "serving" / "models",
                loadable=ws.loadable_types(),
            )
        except LoadRefused as exc:
            self._refuse(version, role, str(exc))
            return None

    def _refuse(self, version: str, role: str, reason: str) -> None:
        if self._stop.is_set():  # stopping: a load cut short is not a refusal
            log.info("stopping: the load of %s version %s as %s was abandoned", self.name, version, role)
            return
        log.error("refused to serve %s version %s as %s: %s", self.name, version, role, reason)
        self._refused[role] = version
        self.metrics.refusals.labels(self.name).inc()
        self.ledger.append(
            EventKind.MODEL_LOAD_REFUSED,
            inputs=[],
            outputs=[],
            details={
                "name": self.name,
                "version": version,
                "role": role,
                "reason": reason,
                "serving": {
                    r: m.verified.version if m else None for r, m in ((CHAMPION, self.champion), (CANARY, self.canary))
                },
            },
        )

    def _deployed(self, verified: VerifiedModel, role: str) -> str:
        """Record the deployment; returns its content address, which the inference log carries per row."""
        self._refused.pop(role, None)
        details = {
            "name": verified.name,
            "version": verified.version,
            "role": role,
            "signer": verified.signer,
            "at": utc_now(),
            "instance": self._instance,
        }
        deployment = json_digest({"deployment": details, "model": verified.version_digest})
        self.ledger.append(
            EventKind.MODEL_DEPLOYED, inputs={"version": verified.version_digest}, outputs=[deployment], details=details
        )
        self.metrics.deployed(verified.name, verified.version, role, llm=self.serves_llm)
        log.info("serving %s version %s as %s (signed by %s)", verified.name, verified.version, role, verified.signer)
        return deployment

    def _start_model(self, verified: VerifiedModel, role: str, timeout: float | None) -> ModelProcess | None:
        if self._stop.is_set():
            verified.discard()
            return None
        model = self.open_predict_runtime(verified, timeout)
        try:
            model.wait_loaded()
        except LoadRefused as exc:
            verified.discard()
            # A Ctrl-C reaches the whole process group, a model process still starting among them:
            # if the service is stopping, that is why the load failed, not the model.
            if self._stop.wait(_STOPPING_GRACE):
                log.info("stopping: the load of %s version %s as %s was cut short", self.name, verified.version, role)
                return None
            self._refuse(verified.version, role, str(exc))
            return None
        model.deployment = self._deployed(verified, role)
        return model

    def open_predict_runtime(self, verified: VerifiedModel, timeout: float | None) -> ModelProcess:
        """Where a verified version runs (``serving.runtime``): its estimator in a child process of
        its own, the spare process when there is one."""
        spare, self._spare = self._spare, None
        return ModelProcess(verified, timeout=timeout, pool=spare)

    def _load_champion(self, version: str) -> None:
        verified = self._verify(version, CHAMPION)
        if verified is None:
            return
        model = self._start_model(verified, CHAMPION, None)
        if model is None:
            return
        old, self.champion = self.champion, model
        self._accept_champion(verified)
        if old is not None:
            old.close()
            old.verified.discard()

    def _load_canary(self, version: str) -> None:
        verified = self._verify(version, CANARY)
        if verified is None:
            return
        refusal = self._accept_canary(verified)
        if refusal is not None:
            verified.discard()
            self._refuse(version, CANARY, refusal)
            return
        model = self._start_model(verified, CANARY, self.serving.canary_timeout_ms / 1000)
        if model is None:
            return
        self.canary = model
        self._canary_seen = 0
        self.controller.serving = version
        self.controller.refresh()

    def _accept_champion(self, verified: VerifiedModel) -> None:
        """The new champion's request shape becomes the service's."""
        self._columns = list(verified.columns)
        self._request_model = request_model(self._columns, max_rows=self.serving.max_rows, context=self._context)

    def _accept_canary(self, verified: VerifiedModel) -> str | None:
        """Why ``verified`` cannot be the champion's canary, or None."""
        if list(verified.columns) != self._columns:
            return "its input columns differ from the champion's: clients could not call both"
        return None

    def _stop_canary(self) -> None:
        canary, self.canary = self.canary, None
        self.controller.serving = None
        self.controller.refresh()
        self.metrics.weight.labels(self.name).set(0)
        self.metrics.retired(self.name, CANARY)
        if canary is not None:
            canary.close()
            canary.verified.discard()

    # -- canary verdicts (on the worker that reached them) ------------------------------------------

    def _remove_canary_alias(self, version: str) -> bool:
        """Drop ``@canary`` if it still names ``version`` (so a restart does not bring it back)."""
        return retire_canary(self.ws.mlflow(), self.name, version)

    def _canary_failed(self, verdict: Verdict) -> None:
        """Weight is 0 for every worker already; remove the alias, record the figures, stop the canary."""
        with self._switch:
            version = self.controller.row.version
            canary = self.canary
            if version is None:
                return
            self.metrics.rollbacks.labels(self.name).inc()
            self.metrics.weight.labels(self.name).set(0)
            restored = self._remove_canary_alias(version)
            # The worker that reached the verdict may not have loaded the canary yet: the registry knows its digest.
            digest = (
                canary.verified.version_digest
                if canary is not None
                else self.ws.registry().tags(self.name, version).get("conveyor.version_digest")
            )
            self.ledger.append(
                EventKind.CANARY_ROLLED_BACK,
                inputs={"version": digest} if digest else [],
                outputs=[],
                details={
                    "name": self.name,
                    "version": version,
                    "reasons": verdict.reasons,
                    "figures": self.controller.status(),
                    "alias_removed": restored,
                    "champion": self.champion.verified.version if self.champion else None,
                },
            )
            log.warning("canary %s version %s rolled back: %s", self.name, version, "; ".join(verdict.reasons))
            self.controller.stop()
            self._stop_canary()
            desired = self.state.set_desired(self.champion.verified.version if self.champion else None, None)
            self._applied = desired.epoch

    def _canary_passed(self, verdict: Verdict) -> None:
        """The last step is clean: promote through the promotion policy, then serve it as champion."""
        with self._switch:
            canary = self.canary
            if canary is None:
                return
            version = canary.verified.version
            try:
                outcome = promote(self.ws, f"{self.name}/{version}", CHAMPION, canary_passed=True)
                ok, reasons = outcome.decision.ok, outcome.decision.reasons
            except Exception as exc:
                ok, reasons = False, [f"promotion failed: {exc}"]
            self.ledger.append(
                EventKind.CANARY_COMPLETED,
                inputs={"version": canary.verified.version_digest},
                outputs=[],
                details={
                    "name": self.name,
                    "version": version,
                    "promoted": ok,
                    "analysis": verdict.reasons,
                    "promotion": reasons,
                    "figures": self.controller.status(),
                },
            )
            if ok:
                self._load_champion(version)  # first: the canary keeps its share until the champion has switched
            self.controller.stop()
            self._stop_canary()
            if not ok:
                log.warning(
                    "canary %s version %s cleared every step but was not promoted: %s",
                    self.name,
                    version,
                    "; ".join(reasons),
                )
                self._remove_canary_alias(version)
            self._publish()

    # -- background -------------------------------------------------------------------------------

    def _shared_tick(self) -> None:
        self.state.try_lead()
        self.controller.flush()
        if self._applied < 0:
            self.sync()  # at start every worker loads from the aliases, all at once
        else:
            self._follow_desired()
        self.controller.refresh()
        self.metrics.weight.labels(self.name).set(self.router.weight / 100 if self.canary else 0)

    def _follow(self) -> None:
        while not self._stop.wait(_SHARED_EVERY):
            self.keys.refresh()  # (Redis) a revoked key stops here, off the request path
            try:
                self._shared_tick()
            except Exception:
                log.exception("could not read the workers' shared state")

    def _analyse(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not self.state.leading:
                self.controller.flush()  # a failure seen here reaches the leader's judgement now
                continue
            try:
                self.controller.evaluate()
            except Exception:
                log.exception("canary analysis failed")

    def _watch(self) -> None:
        while not self._stop.wait(self.serving.watch_seconds):
            try:
                self._read_verdicts()
            except Exception:
                log.exception("could not read the last drift and quality checks")
            if not self.state.leading:
                continue
            try:
                self.sync()
            except Exception:
                log.exception("could not check the registry's aliases")

    def _read_verdicts(self) -> None:
        """The ledger's last drift and quality checks of this model, as metrics (alerts watch them)."""
        found: dict[str, dict[str, Any] | None] = {}
        for kind in (EventKind.DRIFT_CHECKED, EventKind.QUALITY_CHECKED):
            event = next(iter(self.ledger.latest([kind], limit=1, model=self.name)), None)
            found[kind] = None if event is None else {**event.details, "_at": _unix(event.time)}
        self.metrics.verdicts(self.name, found[EventKind.DRIFT_CHECKED], found[EventKind.QUALITY_CHECKED])


def _unix(ledger_time: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ledger_time.replace("Z", "+00:00")).timestamp()


def _problem(error: Any) -> str:
    where = ".".join(map(str, error["loc"])) or "body"
    return f"{where}: {error['msg']}"
