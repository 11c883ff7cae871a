"""One trace per LLM request, in OpenTelemetry's GenAI conventions, written off the request path.

Each request becomes a span (``chat <model>``) with the ``gen_ai.*`` attributes of the
OpenTelemetry semantic conventions for generative AI (operation, request and response model,
max tokens, temperature, token usage by direction, finish reason, response id) and Conveyor's
own (team, role, release version and digest, prompt version, cost, time to first token, cache,
guardrail outcome). A batch processor exports them from its own thread as JSON lines under
``<home>/serving/traces/`` (one file per worker), which any OpenTelemetry collector's file
receiver or a script can read; no text is traced, only counts and outcomes.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Tracer", "read_traces"]


class _JsonLines:
    """An OpenTelemetry span exporter that appends each span as one JSON line."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = []
        for span in spans:
            context = span.get_span_context()
            lines.append(
                json.dumps(
                    {
                        "trace_id": f"{context.trace_id:032x}",
                        "span_id": f"{context.span_id:016x}",
                        "name": span.name,
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "attributes": dict(span.attributes or {}),
                        "resource": dict(span.resource.attributes),
                    }
                )
            )
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class Tracer:
    def __init__(self, folder: Path, *, service: str) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.folder = folder
        # A provider of our own, not the process's global one (BentoML has its own).
        self._provider = TracerProvider(resource=Resource.create({"service.name": f"conveyor-gateway/{service}"}))
        self._provider.add_span_processor(
            BatchSpanProcessor(_JsonLines(folder / f"spans-{os.getpid()}.jsonl"), schedule_delay_millis=1000)  # type: ignore[arg-type]
        )
        self._tracer = self._provider.get_tracer("conveyor.serving")

    def record(self, entry: Any, *, request_model: str, max_tokens: int, temperature: float, started: float) -> None:
        """The span of one logged request (``registry.inference_log.LlmLogEntry``)."""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat" if entry.endpoint == "chat" else "text_completion",
            "gen_ai.provider.name": "conveyor",
            "gen_ai.request.model": request_model,
            "gen_ai.response.model": f"{entry.model}/{entry.version}",
            "gen_ai.request.max_tokens": max_tokens,
            "gen_ai.request.temperature": temperature,
            "gen_ai.response.id": entry.request_id,
            "gen_ai.response.finish_reasons": [entry.finish_reason],
            "gen_ai.usage.input_tokens": entry.prompt_tokens,
            "gen_ai.usage.output_tokens": entry.completion_tokens,
            "conveyor.team": entry.team,
            "conveyor.key": entry.key,
            "conveyor.served_by": entry.served_by,
            "conveyor.release_digest": entry.release_digest or "",
            "conveyor.prompt_version": entry.prompt_version or "",
            "conveyor.cost_usd": entry.cost_usd,
            "conveyor.status": entry.status,
            "conveyor.cached": entry.cached,
            "conveyor.stream": entry.stream,
        }
        if entry.ttft_ms is not None:
            attributes["conveyor.time_to_first_token_ms"] = round(entry.ttft_ms, 3)
        if entry.blocked_by:
            attributes["conveyor.guardrail.blocked_by"] = entry.blocked_by
        if entry.redactions:
            attributes["conveyor.guardrail.redactions"] = entry.redactions.split(",")
        if entry.fallback_from:
            attributes["conveyor.fallback_from"] = entry.fallback_from.split(",")
        start = int(started * 1e9)
        span = self._tracer.start_span(
            f"{attributes['gen_ai.operation.name']} {request_model}", start_time=start, attributes=attributes
        )
        span.end(end_time=start + int(entry.duration_ms * 1e6))

    def close(self) -> None:
        self._provider.shutdown()  # flushes what is queued


def read_traces(folder: Path) -> list[dict[str, Any]]:
    """Every span written under ``folder``."""
    spans = []
    for path in sorted(folder.glob("spans-*.jsonl")):
        spans += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return spans
