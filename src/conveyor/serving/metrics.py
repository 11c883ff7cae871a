"""The service's Prometheus metrics: requests, errors and latency per model version, and the canary.

Inside ``bentoml serve`` the worker runs with ``PROMETHEUS_MULTIPROC_DIR`` set, so these values
land in BentoML's own ``/metrics`` beside its HTTP metrics. Each ``ServiceMetrics`` has its own
registry, so several services in one process (tests) do not collide; ``render`` gives that
registry's text when no multiprocess directory is in use.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from conveyor.registry.events import EventKind
from conveyor.registry.verdicts import verdict_code

__all__ = ["ServiceMetrics"]

_LLM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 120.0)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "version", "role"]
        self.requests = Counter(
            "conveyor_predict_requests",
            "Prediction requests a model answered or failed",
            labels,
            registry=self.registry,
        )
        self.errors = Counter(
            "conveyor_predict_errors",
            "Prediction requests a model failed (raised, timed out, died)",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "conveyor_predict_latency_seconds",
            "Time a model took to answer",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "conveyor_fallbacks", "Canary requests the champion answered instead", ["model"], registry=self.registry
        )
        self.rollbacks = Counter("conveyor_canary_rollbacks", "Canaries rolled back", ["model"], registry=self.registry)
        self.refusals = Counter(
            "conveyor_model_load_refusals", "Models refused at load (did not verify)", ["model"], registry=self.registry
        )
        self.client_errors = Counter(
            "conveyor_client_errors", "Requests refused before any model ran", ["reason"], registry=self.registry
        )
        self.contract_breaches = Counter(
            "conveyor_contract_breaches",
            "Answers that broke the model's output contract (never sent to a client)",
            labels,
            registry=self.registry,
        )
        self.unknown_categories = Counter(
            "conveyor_unknown_categories",
            "Categorical values in requests that the model never saw in training",
            ["model", "column"],
            registry=self.registry,
        )
        # The LLM gateway (OpenTelemetry GenAI names where they exist: tokens by direction, time to first token).
        release = ["model", "version", "role"]
        self.llm_requests = Counter(
            "conveyor_llm_requests", "LLM requests by how they ended", [*release, "status"], registry=self.registry
        )
        self.llm_ttft = Histogram(
            "conveyor_llm_time_to_first_token_seconds",
            "From a request's arrival to the first text sent",
            release,
            buckets=_LLM_BUCKETS,
            registry=self.registry,
        )
        self.llm_tpot = Histogram(
            "conveyor_llm_time_per_output_token_seconds",
            "Time per output token after the first (in the model's process)",
            release,
            buckets=(0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.llm_duration = Histogram(
            "conveyor_llm_request_duration_seconds",
            "A whole LLM request",
            release,
            buckets=_LLM_BUCKETS,
            registry=self.registry,
        )
        self.llm_tokens = Counter(
            "conveyor_llm_tokens",
            "Tokens metered, by team, release and direction (input or output)",
            ["team", "model", "version", "direction"],
            registry=self.registry,
        )
        self.llm_cost = Counter(
            "conveyor_llm_cost_usd",
            "Cost of answered requests at the release's prices",
            ["team", "model", "version"],
            registry=self.registry,
        )
        self.llm_budget = Gauge(
            "conveyor_llm_budget_used_ratio",
            "Share of the team's budget spent this period (this worker)",
            ["team"],
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.llm_cache = Counter(
            "conveyor_llm_cache",
            "Exact-cache lookups of deterministic requests",
            ["model", "version", "result"],
            registry=self.registry,
        )
        self.llm_feedback = Counter(
            "conveyor_llm_feedback",
            "Ratings of answers posted to /v1/feedback",
            ["model", "rating"],
            registry=self.registry,
        )
        self.llm_guardrails = Counter(
            "conveyor_llm_guardrail_events",
            "Guardrail blocks and redactions by the rule that fired",
            ["model", "version", "rule", "action"],
            registry=self.registry,
        )
        self.llm_fallbacks = Counter(
            "conveyor_llm_fallbacks",
            "Requests answered by the next release after one failed",
            ["model", "from_role", "to_role"],
            registry=self.registry,
        )
        self.serving = Gauge(
            "conveyor_serving_info",
            "1 for the version serving each role now, 0 once it no longer does",
            labels,
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self._serving: dict[tuple[str, str], str] = {}
        # The ledger's last verdicts (read by the service every watch interval; -1: never checked)
        self.drift_detected = Gauge(
            "conveyor_drift_detected",
            "Last drift check of the champion's traffic: 1 drift, 0 none, 2 not enough data, -1 never checked",
            ["model"],
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.drift_share = Gauge(
            "conveyor_drift_share",
            "Share of feature columns that drifted in the last drift check (0 to 1)",
            ["model"],
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.quality_breach = Gauge(
            "conveyor_quality_breach",
            "Last quality check (labels, or an LLM release's feedback): 1 breach, 0 ok, 2 not enough data, "
            "3 undefined, -1 never checked",
            ["model"],
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.checked_at = Gauge(
            "conveyor_check_timestamp_seconds",
            "When the last check of each kind (drift, quality) was recorded (Unix time; 0: never)",
            ["model", "check"],
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.weight = Gauge(
            "conveyor_canary_weight",
            "Share of requests routed to the canary (0 to 1)",
            ["model"],
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )

    # Every series an alert may watch exists from the start at 0 (an absent series reads "no data").
    CLIENT_ERRORS = ("unauthorized", "auth_limited", "forbidden", "rate_limited", "invalid")
    LLM_STATUSES = ("ok", "blocked", "cancelled", "failed")

    def start(self, model: str, *, llm: bool) -> None:
        """The series of ``model`` that do not name a version, at 0."""
        for counter in (self.fallbacks, self.rollbacks, self.refusals):
            counter.labels(model)
        for reason in self.CLIENT_ERRORS:
            self.client_errors.labels(reason)
        self.weight.labels(model).set(0)
        self.verdicts(model, None, None)
        if llm:
            for rating in ("up", "down"):
                self.llm_feedback.labels(model, rating)
            for source, target in (("champion", "fallback"), ("canary", "champion")):
                self.llm_fallbacks.labels(model, source, target)  # what an alert watches, from the start

    def deployed(self, model: str, version: str, role: str, *, llm: bool) -> None:
        """The series of a version now serving as ``role``, at 0; it is the one serving that role."""
        self.retired(model, role)
        self._serving[(model, role)] = version
        self.serving.labels(model, version, role).set(1)
        if llm:
            for status in self.LLM_STATUSES:
                self.llm_requests.labels(model, version, role, status)
            for result in ("hit", "miss"):
                self.llm_cache.labels(model, version, result)
            return
        for counter in (self.requests, self.errors, self.contract_breaches):
            counter.labels(model, version, role)

    def retired(self, model: str, role: str) -> None:
        """No version serves ``role`` any more (a canary stopped, a champion replaced)."""
        version = self._serving.pop((model, role), None)
        if version is not None:
            self.serving.labels(model, version, role).set(0)

    def verdicts(self, model: str, drift: dict | None, quality: dict | None) -> None:
        """The last drift and quality checks' details (as the ledger holds them, None: never) and times."""
        self.drift_detected.labels(model).set(verdict_code("drift", (drift or {}).get("status")))
        self.drift_share.labels(model).set(float((drift or {}).get("share") or 0))
        self.quality_breach.labels(model).set(verdict_code("quality", (quality or {}).get("status")))
        for check, details in (("drift", drift), ("quality", quality)):
            self.checked_at.labels(model, check).set(float((details or {}).get("_at", 0)))

    def read_verdicts(self, ledger: Any, model: str) -> None:
        """The ledger's last drift and quality checks of ``model``, as metrics (alerts watch them)."""
        found: dict[str, dict[str, Any] | None] = {}
        for kind in (EventKind.DRIFT_CHECKED, EventKind.QUALITY_CHECKED):
            event = next(iter(ledger.latest([kind], limit=1, model=model)), None)
            at = datetime.fromisoformat(event.time.replace("Z", "+00:00")).timestamp() if event else 0
            found[kind] = None if event is None else {**event.details, "_at": at}
        self.verdicts(model, found[EventKind.DRIFT_CHECKED], found[EventKind.QUALITY_CHECKED])

    def render(self) -> str:
        """This registry as Prometheus text; empty when BentoML collects it from the multiprocess directory."""
        from prometheus_client import values

        if values.ValueClass is not values.MutexValue:  # multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by BentoML)
            return ""
        return generate_latest(self.registry).decode()
