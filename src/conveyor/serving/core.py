"""The serving core: what a service serves and who answers, whatever kind of model it is.

One core per worker. It follows the registry's ``champion`` and ``canary`` aliases (and, for an
LLM project, the fallback release's ``champion``), verifies every version before it is loaded,
opens it on a model runtime (``serving.runtime``), routes champion / canary / fallback, owns the
workers' shared state and the canary controller, and records what it deployed, refused and what
failed. What differs by kind of model is a ``Loader``: how a version is verified and which
runtime it runs on. The front ends are thin: ``serving.tabular`` (``POST /predict``) and
``serving.gateway`` (the OpenAI API).

The leading worker watches the aliases and publishes what it serves in the shared state; every
worker serves what is published, verifying it itself. A version that does not verify, or whose
runtime cannot load, is refused, logged, recorded, and the core keeps serving what it had. Alias
changes (a canary promoted or rolled back) go through ``registry.release.ServingAliases`` only.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Generic

from conveyor.policies.errors import LoadRefused, ModelFailed
from conveyor.registry.digests import json_digest
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import utc_now
from conveyor.registry.release import CANARY, CHAMPION, ServingAliases
from conveyor.registry.workspace import Workspace
from conveyor.serving.access import Access
from conveyor.serving.canary import CanaryController
from conveyor.serving.faults import FaultRecorder
from conveyor.serving.metrics import ServiceMetrics
from conveyor.serving.router import Router
from conveyor.serving.runtime import Loader, R, Served
from conveyor.serving.shared import open_shared_state
from conveyor.serving.verdicts import promoted, rolled_back

__all__ = ["FALLBACK", "Loader", "Served", "ServingCore"]

log = logging.getLogger("conveyor.serving")

FALLBACK = "fallback"  # the role of an LLM project's fallback release
_SHARED_EVERY = 0.2  # seconds between two reads of the shared state (weight, desired models, keys)


class ServingCore(Generic[R]):
    def __init__(
        self,
        ws: Workspace,
        name: str,
        loader: Loader[R],
        *,
        controller_class: type[CanaryController] = CanaryController,
        fallback_name: str | None = None,
        aliases: ServingAliases | None = None,
        fallback_aliases: ServingAliases | None = None,
    ) -> None:
        self._instance = uuid.uuid4().hex  # this worker: tells two deployments of one version apart
        self.ws, self.name, self.loader, self.fallback_name = ws, name, loader, fallback_name
        self.serving = ws.serving_policy()
        self.ledger = ws.ledger()  # held for the service's life, closed by ``close``
        self.aliases = aliases or ServingAliases(ws, name)
        self._fallback_aliases = fallback_aliases or (ServingAliases(ws, fallback_name) if fallback_name else None)
        self.router = Router(0)
        self.state = open_shared_state(ws.home, ws.settings.service_run, name, ws.settings.redis_url)
        self.controller = controller_class(
            self.state,
            self.router,
            ws.canary_policy(),
            on_promote=lambda verdict: promoted(self, verdict),
            on_rollback=lambda verdict: rolled_back(self, verdict),
            worker=self._instance,
        )
        self.metrics = ServiceMetrics()
        self.metrics.start(name, llm=loader.llm)
        self.access = Access(ws, self.serving, self.metrics, recheck=_SHARED_EVERY)
        self.faults = FaultRecorder(ws, name)
        self.champion: Served[R] | None = None
        self.canary: Served[R] | None = None
        self.fallback: Served[R] | None = None
        self.refused: dict[str, str] = {}  # role -> version last refused (not retried until the alias moves)
        self.switch = threading.RLock()  # one model switch at a time
        self._applied = -1  # the epoch of the desired models this worker serves
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._canary_seen = 0
        self._said_not_ready = False
        self._threads: list[threading.Thread] = []

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load what the aliases say, then keep following them (and the other workers)."""
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
        """Stop the background threads and the models' runtimes."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        with self.switch:
            self.controller.flush()
            self.loader.close()
            for role, served in self.served():
                setattr(self, role, None)
                if served is not None:
                    served.close()
        self.ledger.close()
        self.state.close()
        self.access.close()

    @property
    def ready(self) -> bool:
        return self.champion is not None

    # -- routing ----------------------------------------------------------------------------------

    def order(self, key: str | None, *, fallback: bool) -> list[tuple[Served[R], str]]:
        """Who may answer a request routed by ``key``, in the order they are tried: the canary when
        the router sends ``key`` there, the champion, the fallback when ``fallback`` allows it (or
        alone, with no champion). Empty when nothing is loaded."""
        champion, canary, spare = self.champion, self.canary, self.fallback
        if champion is None:
            return [] if spare is None else [(spare, FALLBACK)]
        order: list[tuple[Served[R], str]] = []
        if canary is not None and self.router.route(key) == CANARY:
            order.append((canary, CANARY))
        order.append((champion, CHAMPION))
        if spare is not None and fallback:
            order.append((spare, FALLBACK))
        return order

    def observed(self, role: str, *, latency_ms: float, **seen: Any) -> None:
        """A request answered by ``role`` (``seen``: its predictions or its answer's signals)."""
        self.controller.observe(role, ok=True, latency_ms=latency_ms, **seen)
        if role == CANARY:
            self._canary_seen += 1
            if self._canary_seen % self.loader.judge_every == 0:
                self._wake.set()

    def failed(self, model: Served[R], role: str, exc: ModelFailed) -> None:
        """A model's failure: counted, judged at once for a canary, recorded (at most once a minute per kind)."""
        version = model.verified.version
        log.warning("%s version %s failed a request (%s): %s", role, version, exc.kind, exc)
        labels = (self.name, version, role)
        self.metrics.requests.labels(*labels).inc()
        self.metrics.errors.labels(*labels).inc()
        if exc.kind == "contract":
            self.metrics.contract_breaches.labels(*labels).inc()
        self.controller.observe(role, ok=False, kind=exc.kind, latency_ms=0.0)
        if role == CANARY:
            self._wake.set()
        if model.deployment is not None and not self._stop.is_set():
            self.faults.record(model.deployment, version, role, exc)

    # -- admin (the canary's verbs: ``serving.verdicts``) ---------------------------------------------

    def served(self) -> list[tuple[str, Served[R] | None]]:
        return [(CHAMPION, self.champion), (CANARY, self.canary), (FALLBACK, self.fallback)]

    def status(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "ready": self.ready,
            **{role: m.describe() if m else None for role, m in self.served()},
            "analysis": self.controller.status(),
            "refused": dict(self.refused),
            "workers": self.serving.workers,
            "policy": self.ws.canary_policy().model_dump(),
        }

    # -- following the aliases ----------------------------------------------------------------------

    def sync(self) -> dict[str, Any]:
        """Load what the aliases point at now, if it changed, and publish it for the other workers
        (the leader does so every ``watch_seconds``, any worker on ``/admin/reload``)."""
        with self.switch:
            wanted = self.aliases.version(CHAMPION)
            current = self._version(self.champion)
            if wanted is not None and wanted != current and self.refused.get(CHAMPION) != wanted:
                self.load(CHAMPION, wanted)
            self._say_if_not_ready(wanted)
            wanted_canary = self.aliases.version(CANARY)
            if wanted_canary == (self._version(self.champion)):
                wanted_canary = None  # a canary that is already champion has nothing left to prove
            current = self._version(self.canary)
            if wanted_canary != current and self.refused.get(CANARY) != wanted_canary:
                self.stop_canary()
                if wanted_canary is not None and self.champion is not None:
                    self.load(CANARY, wanted_canary)
            self.publish()
            self._sync_fallback()
        return self.status()

    def _say_if_not_ready(self, wanted: str | None) -> None:
        if self.champion is not None or self._said_not_ready:
            self._said_not_ready = self.champion is None  # said once: the watch asks again every few seconds
            return
        self._said_not_ready = True
        why = (
            f"@champion (version {wanted}) was refused at load: see the ledger's model.load_refused"
            if wanted is not None
            else f"{self.name} has no @champion (promote one: `conveyor promote {self.name}/<version> --to champion`)"
        )
        log.warning("not ready: %s; checking the registry every %g s", why, self.serving.watch_seconds)

    def _sync_fallback(self) -> None:
        try:
            wanted = self._fallback_aliases.version(CHAMPION) if self._fallback_aliases else None
        except Exception:
            wanted = None
        if wanted is not None and wanted not in (self._version(self.fallback), self.refused.get(FALLBACK)):
            self.load(FALLBACK, wanted)

    def publish(self) -> None:
        """What this worker serves is what every worker must serve."""
        desired = self.state.set_desired(self._version(self.champion), self._version(self.canary))
        self._applied = desired.epoch
        if self.canary is not None:
            self.controller.start(self.canary.verified.version)
            self.metrics.weight.labels(self.name).set(self.router.weight / 100)

    def _follow_desired(self) -> None:
        """Serve the models the leader published, if they changed."""
        if self.state.desired().epoch == self._applied:
            return
        with self.switch:
            desired = self.state.desired()  # again, under the lock: a switch may have published meanwhile
            if desired.epoch == self._applied:
                return
            current = self._version(self.champion)
            if desired.champion is not None and desired.champion != current:
                self.load(CHAMPION, desired.champion)
            current = self._version(self.canary)
            if desired.canary != current:
                self.stop_canary()
                if desired.canary is not None and self.champion is not None:
                    self.load(CANARY, desired.canary)
            self._applied = desired.epoch

    # -- loading ------------------------------------------------------------------------------------

    def load(self, role: str, version: str) -> None:
        """Verify ``version``, open it on a runtime and serve it as ``role``; refused, it changes nothing."""
        name = self.fallback_name if role == FALLBACK else self.name
        assert name is not None  # a fallback role exists only for a project that names one
        try:
            verified = self.loader.verify(name, version, self.ledger)
        except LoadRefused as exc:
            self._refuse(version, role, str(exc))
            return
        why = self.loader.fits(verified) if role == CANARY else None
        if why is not None:
            verified.discard()
            self._refuse(version, role, why)
            return
        timeout = self.serving.canary_timeout_ms / 1000 if role == CANARY else None
        served = self._start(verified, role, timeout)
        if served is None:
            return
        old = getattr(self, role)
        setattr(self, role, served)
        if role == CHAMPION:
            self.loader.accepted(verified)
        if role == CANARY:
            self._canary_seen = 0
            self.controller.serving = version
            self.controller.refresh()
        if old is not None:
            old.close()
        self._arranged()

    def _start(self, verified: Any, role: str, timeout: float | None) -> Served[R] | None:
        if self._stop.is_set():
            verified.discard()
            return None
        runtime = self.loader.open(verified, role, timeout)
        try:
            runtime.wait_loaded()
        except LoadRefused as exc:
            verified.discard()
            # A Ctrl-C reaches the whole process group, a model process still starting among them:
            # if the service is stopping, that is why the load failed, not the model.
            if self._stop.wait(self.loader.stopping_grace):
                log.info("stopping: the load of %s version %s as %s was cut short", self.name, verified.version, role)
                return None
            self._refuse(verified.version, role, str(exc))
            return None
        served = Served(verified, runtime)
        served.deployment = self._deployed(verified, role)
        return served

    def _refuse(self, version: str, role: str, reason: str) -> None:
        if self._stop.is_set():  # stopping: a load cut short is not a refusal
            log.info("stopping: the load of %s version %s as %s was abandoned", self.name, version, role)
            return
        log.error("refused to serve %s version %s as %s: %s", self.name, version, role, reason)
        self.refused[role] = version
        self.metrics.refusals.labels(self.name).inc()
        serving = {CHAMPION: self._version(self.champion), CANARY: self._version(self.canary)}
        self.ledger.append(
            EventKind.MODEL_LOAD_REFUSED,
            inputs=[],
            outputs=[],
            details={"name": self.name, "version": version, "role": role, "reason": reason, "serving": serving},
        )

    def _deployed(self, verified: Any, role: str) -> str:
        """Record the deployment; returns its content address, which the inference log carries per row."""
        self.refused.pop(role, None)
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
        self.metrics.deployed(verified.name, verified.version, role, llm=self.loader.llm)
        log.info("serving %s version %s as %s (signed by %s)", verified.name, verified.version, role, verified.signer)
        return deployment

    def stop_canary(self) -> None:
        canary, self.canary = self.canary, None
        self.controller.serving = None
        self.controller.refresh()
        self.metrics.weight.labels(self.name).set(0)
        self.metrics.retired(self.name, CANARY)
        if canary is not None:
            canary.close()
        self._arranged()

    def _arranged(self) -> None:
        self.loader.arranged([m for m in (self.champion, self.canary) if m is not None], self.fallback)

    @staticmethod
    def _version(served: Served[R] | None) -> str | None:
        return served.verified.version if served is not None else None

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
            self.access.refresh()  # (Redis) a revoked key stops here, off the request path
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
                self.metrics.read_verdicts(self.ledger, self.name)
            except Exception:
                log.exception("could not read the last drift and quality checks")
            if not self.state.leading:
                continue
            try:
                self.sync()
            except Exception:
                log.exception("could not check the registry's aliases")
