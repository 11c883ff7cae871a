"""How an answer ends and how it goes out: the outcome of a request, and the answer on the wire
(JSON, or OpenAI's server-sent events) with its usage and who served it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from conveyor.serving.openai_api import chunk, completion_body, now, sse
from conveyor.serving.releases import ServedRelease

__all__ = [
    "AnswerStream",
    "Outcome",
    "Send",
    "cacheable",
    "conveyor_of",
    "send_whole",
    "start_response",
    "tpot_of",
    "usage_of",
]

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Outcome:
    """How a request ended, for the log, the metrics, the trace and the canary's analysis."""

    release: ServedRelease | None
    role: str
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    ttft_ms: float | None = None  # first text sent to the client, from the request's arrival
    model_ttft_ms: float | None = None  # first token in the model's process, from the call's start
    model_ms: float = 0.0
    blocked_by: str | None = None
    redactions: tuple[str, ...] = ()
    refused: bool = False
    cached: bool = False
    status: str = "ok"  # ok | blocked | cancelled | failed
    fallbacks: list[str] = field(default_factory=list)
    passages: tuple[dict[str, Any], ...] = ()
    retrieval_score: float | None = None


def usage_of(outcome: Outcome) -> dict[str, int]:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


def tpot_of(outcome: Outcome) -> float | None:
    """Milliseconds per output token after the first, in the model's process."""
    if outcome.model_ttft_ms is None or outcome.completion_tokens < 2:
        return None
    return (outcome.model_ms - outcome.model_ttft_ms) / (outcome.completion_tokens - 1)


def cacheable(outcome: Outcome) -> dict[str, Any]:
    return {
        "text": outcome.text,
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "finish_reason": outcome.finish_reason,
        "redactions": outcome.redactions,
        "refused": outcome.refused,
    }


async def start_response(send: Send, status: int, kind: bytes, length: int | None = None) -> None:
    headers = [(b"content-type", kind)]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    else:
        headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
    await send({"type": "http.response.start", "status": status, "headers": headers})


class AnswerStream:
    """A streamed answer on the wire: headers at the first text (so a failure before it can still
    go to the next release), one event per released piece, the finish, the usage, ``[DONE]``."""

    def __init__(self, send: Send, request_id: str, model: str, chat: bool, arrived: float) -> None:
        self._send, self.request_id, self.model, self.chat, self.arrived = send, request_id, model, chat, arrived
        self.created = now()
        self.started = False
        self.first_ms: float | None = None

    async def _open(self) -> None:
        if not self.started:
            self.started = True
            await start_response(self._send, 200, b"text/event-stream; charset=utf-8")
            if self.chat:
                await self._event(
                    chunk(
                        request_id=self.request_id,
                        model=self.model,
                        created=self.created,
                        chat=True,
                        role=True,
                        text="",
                    )
                )

    async def _event(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def send(self, text: str) -> None:
        await self._open()
        if self.first_ms is None:
            self.first_ms = (time.perf_counter() - self.arrived) * 1000
        await self._event(
            chunk(request_id=self.request_id, model=self.model, created=self.created, chat=self.chat, text=text)
        )

    async def end(self, outcome: Outcome, conveyor: dict[str, Any]) -> None:
        await self._open()
        finish = "stop" if outcome.finish_reason == "cancelled" else outcome.finish_reason
        args: dict[str, Any] = {
            "request_id": self.request_id,
            "model": self.model,
            "created": self.created,
            "chat": self.chat,
        }
        await self._event(chunk(**args, finish_reason=finish, conveyor=conveyor))
        await self._event(chunk(**args, empty_choices=True, usage=usage_of(outcome)))
        await self._send({"type": "http.response.body", "body": sse("[DONE]"), "more_body": False})

    async def error(self, message: str) -> None:
        await self._event(
            sse({"error": {"message": message, "type": "server_error", "param": None, "code": "model_failed"}})
        )
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


def conveyor_of(outcome: Outcome) -> dict[str, Any]:
    """What an answer says of itself beside OpenAI's fields: who served it and what fired."""
    v = outcome.release.verified if outcome.release is not None else None
    return {
        "served_by": outcome.role,
        "release": v.name if v else None,
        "version": v.version if v else None,
        "prompt_version": v.prompt_version if v else None,
        "cached": outcome.cached,
        "blocked_by": outcome.blocked_by,
        "redactions": list(outcome.redactions),
        "fallback_from": outcome.fallbacks,
        "passages": [{"id": p["id"], "document": p["document"], "score": p["score"]} for p in outcome.passages],
    }


async def send_whole(send: Send, model: str, request_id: str, outcome: Outcome, chat: bool, *, stream: bool) -> None:
    """An answer known whole (cached, blocked or not streamed), as JSON or as a short stream."""
    if stream:
        out = AnswerStream(send, request_id, model, chat, time.perf_counter())
        if outcome.text:
            await out.send(outcome.text)
        await out.end(outcome, conveyor_of(outcome))
        return
    body = completion_body(
        request_id=request_id,
        model=model,
        created=now(),
        text=outcome.text,
        finish_reason=outcome.finish_reason,
        usage=usage_of(outcome),
        chat=chat,
        conveyor=conveyor_of(outcome),
    )
    await start_response(send, 200, b"application/json", len(body))
    await send({"type": "http.response.body", "body": body})
