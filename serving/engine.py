"""The serving engine: what the service does, without the HTTP around it.

It holds the champion (in this process) and the canary (in a child process), both loaded only
after ``verify`` passed. It watches the registry's ``champion`` and ``canary`` aliases and loads
what they point at; a version that does not verify is refused, logged, recorded in the ledger,
and the engine keeps serving what it had. Each request is checked against the champion's
signature, routed (sticky per key), answered, and logged off the request path. A canary that
fails a request is answered for by the champion; its failure counts against it. An analyst
thread asks ``judge_canary`` after every canary error and every few canary requests; a rollback
sets the canary's weight to 0 at once, removes the ``canary`` alias and records the figures; a
canary that clears the last step is promoted by the promotion policy, like any other promotion.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import ValidationError

from policies.canary import Verdict
from policies.serving import ServingPolicy
from registry.digests import json_digest
from registry.events import EventKind
from registry.inference_log import InferenceLog, LogEntry
from registry.ledger import utc_now
from registry.release import CANARY, CHAMPION, alias, promote
from registry.workspace import Workspace
from serving.auth import ApiKeys, RateLimiter, Role
from serving.canary import CanaryController
from serving.metrics import ServiceMetrics
from serving.models import InProcessModel, IsolatedModel, LoadRefused, VerifiedModel, load_verified
from serving.router import Router
from serving.schema import request_model

__all__ = ["ClientError", "Engine"]

log = logging.getLogger("conveyor.serving")

_EVALUATE_EVERY = 20  # canary requests between two judgements (every canary error is judged at once)


class ClientError(Exception):
    """A request the service refuses: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Engine:
    def __init__(self, ws: Workspace) -> None:
        self._instance = uuid.uuid4().hex  # this service process: tells two deployments of one version apart
        self.ws = ws
        project = ws.project()  # read once: nothing on the request path reads a file
        self.name = project.model_name
        self._task = project.task
        # The row fields that are not model inputs but are logged: entity key and event time.
        self._context = (project.entity_key, project.event_timestamp)
        self.serving: ServingPolicy = ws.serving_policy()
        self.ledger = ws.ledger()  # held for the service's life, closed by ``close``
        self.router = Router(0)
        self.controller = CanaryController(
            self.router, ws.canary_policy(), on_promote=self._canary_passed, on_rollback=self._canary_failed
        )
        self.metrics = ServiceMetrics()
        self.keys = ApiKeys(ws.api_keys_file)
        self.limiter = RateLimiter(self.serving.rate_limit.per_second, self.serving.rate_limit.burst)
        self.log = InferenceLog(ws.inference_dir(self.name))
        self.champion: InProcessModel | None = None
        self.canary: IsolatedModel | None = None
        self._request_model: Any = None
        self._columns: list[Any] = []
        self._refused: dict[str, str] = {}  # role -> version last refused (not retried until the alias moves)
        self._switch = threading.RLock()  # one model switch at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._canary_seen = 0
        self._roles: OrderedDict[bytes, Role | None] = OrderedDict()  # checked keys, by their sha256
        self._threads: list[threading.Thread] = []

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load what the aliases point at, then watch them and judge the canary in the background."""
        self.sync()
        for name, target in (("canary-analyst", self._analyse), ("alias-watcher", self._watch)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop the background threads and the canary's process; write out the inference log."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        with self._switch:
            if self.canary is not None:
                self.canary.close()
            for model in (self.champion, self.canary):
                if model is not None:
                    model.verified.discard()
        self.log.close()
        self.ledger.close()

    @property
    def ready(self) -> bool:
        return self.champion is not None

    # -- requests ---------------------------------------------------------------------------------

    def authorize(self, token: str | None, *, admin: bool = False) -> Role:
        """The caller's role; 401 without a valid key, 403 for a predict key at an admin endpoint, 429 over the limit."""
        role = self._role(token)
        if role is None:
            if admin or self.serving.api_keys_required:
                self.metrics.client_errors.labels("unauthorized").inc()
                raise ClientError(401, "a valid API key is required (header `Authorization: Bearer <key>`)")
            role = Role("anonymous", admin=False)
        if admin and not role.admin:
            self.metrics.client_errors.labels("forbidden").inc()
            raise ClientError(403, f"the key of {role.name!r} is not an admin key")
        if not admin and not self.limiter.allow(role.name, rate=role.per_second, burst=role.burst):
            self.metrics.client_errors.labels("rate_limited").inc()
            rate = role.per_second or self.serving.rate_limit.per_second
            raise ClientError(429, f"rate limit of {rate:g} requests/s for {role.name!r} exceeded; retry later")
        return role

    def _role(self, token: str | None) -> Role | None:
        if not token:
            return None
        fingerprint = hashlib.sha256(token.encode()).digest()
        if fingerprint in self._roles:
            return self._roles[fingerprint]
        role = self.keys.check(token)  # one scrypt; remembered, so a key costs it once
        self._roles[fingerprint] = role
        while len(self._roles) > 10_000:
            self._roles.popitem(last=False)
        return role

    async def predict(self, rows: Any, key: str | None = None) -> dict[str, Any]:
        """Answer ``rows``: by the canary when routed there and it succeeds, by the champion otherwise."""
        champion, canary = self.champion, self.canary
        if champion is None or self._request_model is None:
            raise ClientError(503, "no verified champion is loaded yet")
        checked = self._rows(rows, key)
        request_id = uuid.uuid4().hex
        answered_by, answer = "champion", None
        if canary is not None and self.router.route(key) == "canary":
            answer = await self._ask(canary, "canary", checked)
            if answer is not None:
                answered_by = "canary"
            else:
                self.metrics.fallbacks.labels(self.name).inc()
        if answer is None:
            answer = await self._ask(champion, "champion", checked)
            if answer is None:
                raise ClientError(500, "the champion failed to answer; see the service log")
        model = canary if answered_by == "canary" else champion
        version = model.verified.version  # type: ignore[union-attr]
        predictions = [float(v) for v in answer]
        self._record(request_id, checked, version, predictions, answered_by, model.deployment)  # type: ignore[union-attr]
        return {
            "request_id": request_id,
            "model": self.name,
            "version": version,
            "served_by": answered_by,
            "predictions": predictions,
        }

    def _rows(self, rows: Any, key: str | None) -> list[dict[str, Any]]:
        """The request checked against the champion's signature: one plain dict per row."""
        try:
            request = self._request_model.model_validate({"rows": rows, "key": key})
        except ValidationError as exc:
            self.metrics.client_errors.labels("invalid").inc()
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:10])
            raise ClientError(400, f"invalid request: {problems}") from None
        return [row.__dict__ for row in request.rows]

    async def _ask(
        self, model: InProcessModel | IsolatedModel, role: str, rows: list[dict[str, Any]]
    ) -> np.ndarray | None:
        """The model's answer, or None when it failed (counted, and judged at once for a canary)."""
        labels = (self.name, model.verified.version, role)
        started = time.perf_counter()
        timeout = self.serving.canary_timeout_ms / 1000 if role == "canary" else None
        try:
            answer = await model.predict(rows, timeout)
        except Exception as exc:
            elapsed = time.perf_counter() - started
            log.warning("%s version %s failed a request: %s", role, model.verified.version, exc)
            self.metrics.requests.labels(*labels).inc()
            self.metrics.errors.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(elapsed)
            self.controller.observe(role, ok=False, latency_ms=elapsed * 1000)
            if role == "canary":
                self._wake.set()
            return None
        self.metrics.requests.labels(*labels).inc()
        self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
        self.controller.observe(role, ok=True, latency_ms=answer.model_ms, predictions=answer.values.tolist())
        if role == "canary":
            self._canary_seen += 1
            if self._canary_seen % _EVALUATE_EVERY == 0:
                self._wake.set()
        return answer.values

    def _record(
        self,
        request_id: str,
        rows: list[dict[str, Any]],
        version: str,
        predictions: list[float],
        served_by: str,
        deployment: str | None,
    ) -> None:
        now = datetime.now(UTC)
        entity_key, event_time = self._context
        inputs = [c.name for c in self._columns]
        for i, (row, prediction) in enumerate(zip(rows, predictions, strict=True)):
            entity, at = row.get(entity_key), row.get(event_time)
            features = {name: row.get(name) for name in inputs}
            self.log.record(
                LogEntry(
                    request_id,
                    now,
                    self.name,
                    version,
                    features,
                    prediction,
                    served_by,
                    i,
                    None if entity is None else str(entity),
                    None if at is None else str(at),
                    deployment,
                )
            )

    # -- admin ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        def describe(model: InProcessModel | IsolatedModel | None) -> dict[str, Any] | None:
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
            "policy": self.ws.canary_policy().model_dump(),
        }

    def set_weight(self, weight: float, hold: bool = False) -> dict[str, Any]:
        if self.canary is None:
            raise ClientError(409, "no canary is being served; promote a version to canary first")
        if not 0 <= weight <= 100:
            raise ClientError(400, f"weight must be between 0 and 100, not {weight}")
        try:
            self.controller.set_weight(weight, hold=hold)
        except ValueError as exc:
            raise ClientError(409, str(exc)) from None
        self.metrics.weight.labels(self.name).set(weight)
        return self.status()

    def abort(self, reason: str) -> dict[str, Any]:
        if self.canary is None:
            raise ClientError(409, "no canary is being served")
        self.controller.abort(f"aborted by an admin: {reason}")
        return self.status()

    # -- models -----------------------------------------------------------------------------------

    def sync(self) -> dict[str, Any]:
        """Load whatever the ``champion`` and ``canary`` aliases point at now, if it changed."""
        client = self.ws.mlflow()
        with self._switch:
            wanted_champion = alias(client, self.name, CHAMPION)
            current = self.champion.verified.version if self.champion else None
            if (
                wanted_champion is not None
                and wanted_champion != current
                and self._refused.get(CHAMPION) != wanted_champion
            ):
                self._load_champion(wanted_champion)
            wanted_canary = alias(client, self.name, CANARY)
            if wanted_canary == (self.champion.verified.version if self.champion else None):
                wanted_canary = None  # a canary that is already champion has nothing left to prove
            current = self.canary.verified.version if self.canary else None
            if wanted_canary != current and self._refused.get(CANARY) != wanted_canary:
                self._stop_canary()
                if wanted_canary is not None and self.champion is not None:
                    self._load_canary(wanted_canary)
        return self.status()

    def _verify(self, version: str, role: str) -> VerifiedModel | None:
        ws = self.ws
        try:
            verified = load_verified(
                f"{self.name}/{version}",
                policy=ws.signing(),
                root=ws.root,
                keys_dir=ws.keys_dir,
                ledger=self.ledger,
                task=self._task,
                workspace=ws.home / "serving" / "models",
            )
        except LoadRefused as exc:
            self._refuse(version, role, str(exc))
            return None
        return verified

    def _refuse(self, version: str, role: str, reason: str) -> None:
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
        log.info("serving %s version %s as %s (signed by %s)", verified.name, verified.version, role, verified.signer)
        return deployment

    def _load_champion(self, version: str) -> None:
        verified = self._verify(version, CHAMPION)
        if verified is None:
            return
        try:
            model = InProcessModel(verified)
        except Exception as exc:
            verified.discard()
            self._refuse(version, CHAMPION, f"failed to load: {exc!r}")
            return
        model.deployment = self._deployed(verified, CHAMPION)
        old, self.champion = self.champion, model
        self._columns = list(verified.columns)
        self._request_model = request_model(self._columns, max_rows=self.serving.max_rows, context=self._context)
        if old is not None:
            old.close()
            old.verified.discard()

    def _load_canary(self, version: str) -> None:
        verified = self._verify(version, CANARY)
        if verified is None:
            return
        if list(verified.columns) != self._columns:
            verified.discard()
            self._refuse(version, CANARY, "its input columns differ from the champion's: clients could not call both")
            return
        try:
            model = IsolatedModel(verified)
        except LoadRefused as exc:
            verified.discard()
            self._refuse(version, CANARY, str(exc))
            return
        model.deployment = self._deployed(verified, CANARY)
        self.canary = model
        self._canary_seen = 0
        self.controller.start()
        self.metrics.weight.labels(self.name).set(self.router.weight)

    def _stop_canary(self) -> None:
        canary, self.canary = self.canary, None
        self.controller.stop()
        self.metrics.weight.labels(self.name).set(0)
        if canary is not None:
            canary.close()
            canary.verified.discard()

    # -- canary verdicts (on the analyst thread) ----------------------------------------------

    def _remove_canary_alias(self, version: str) -> bool:
        """Drop ``@canary`` if it still names ``version`` (so a restart does not bring it back)."""
        client = self.ws.mlflow()
        if alias(client, self.name, CANARY) != version:
            return False
        client.delete_registered_model_alias(self.name, CANARY)
        return True

    def _canary_failed(self, verdict: Verdict) -> None:
        """Weight is 0 already; remove the alias, record the figures, stop the canary."""
        with self._switch:
            canary = self.canary
            if canary is None:
                return
            version = canary.verified.version
            self.metrics.rollbacks.labels(self.name).inc()
            self.metrics.weight.labels(self.name).set(0)
            restored = self._remove_canary_alias(version)
            self.ledger.append(
                EventKind.CANARY_ROLLED_BACK,
                inputs={"version": canary.verified.version_digest},
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
            self._stop_canary()

    def _canary_passed(self, verdict: Verdict) -> None:
        """The last step is clean: promote through the promotion policy, then serve it as champion."""
        with self._switch:
            canary = self.canary
            if canary is None:
                return
            version = canary.verified.version
            try:
                outcome = promote(self.ws, f"{self.name}/{version}", CHAMPION)
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
            self._stop_canary()
            if not ok:
                log.warning(
                    "canary %s version %s cleared every step but was not promoted: %s",
                    self.name,
                    version,
                    "; ".join(reasons),
                )
                self._remove_canary_alias(version)

    # -- background -------------------------------------------------------------------------------

    def _analyse(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.controller.evaluate()
                self.metrics.weight.labels(self.name).set(self.router.weight if self.canary else 0)
            except Exception:
                log.exception("canary analysis failed")

    def _watch(self) -> None:
        while not self._stop.wait(self.serving.watch_seconds):
            try:
                self.sync()
            except Exception:
                log.exception("could not check the registry's aliases")
