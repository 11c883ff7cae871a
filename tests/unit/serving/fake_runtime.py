"""A model runtime that runs nothing: scripted pieces, a scripted failure, counted requests.

It implements ``serving.runtime.GenerateRuntime`` as llama.cpp's child process does, so the
serving core's loading and the gateway's request path (routing, fallbacks, guardrails, streaming, accounting) can be tested
without a model: what a real runtime does is tested against the real one in
``tests/integration/test_llm_process.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from conveyor.policies.errors import LoadRefused, ModelFailed
from conveyor.serving.runtime import Generated, GenerateRuntime, Generation, Request

Failure = Literal["overload", "before_first", "mid_stream", "stall"]


class FakeRuntime(GenerateRuntime):
    def __init__(
        self, pieces: tuple[str, ...] = ("Hello", " there."), *, fail: Failure | None = None, load_error: str = ""
    ) -> None:
        self.pieces, self.fail, self.load_error = pieces, fail, load_error
        self.requests: list[tuple[Request, dict[str, Any]]] = []
        self.cancelled = 0
        self.closed = False
        self.pid = None

    def wait_loaded(self, timeout: float = 120) -> None:
        if self.load_error:
            raise LoadRefused(self.load_error)

    def close(self, drain_seconds: float = 10.0) -> None:
        self.closed = True

    async def begin(
        self, request: Request, params: dict[str, Any], *, first_token_seconds: float, total_seconds: float
    ) -> Generation:
        self.requests.append((request, params))
        if self.fail == "overload":
            raise ModelFailed("8 requests already wait for this model", "overload")
        return _FakeGeneration(self, first_token_seconds)


class _FakeGeneration(Generation):
    def __init__(self, runtime: FakeRuntime, first_token_seconds: float) -> None:
        self.runtime, self.first = runtime, first_token_seconds
        self.started = time.perf_counter()
        self.sent: list[str] = []
        self.result: Generated | None = None

    def __aiter__(self) -> AsyncIterator[str | Generated]:
        return self._items()

    async def _items(self) -> AsyncIterator[str | Generated]:
        for number, piece in enumerate(self.runtime.pieces):
            if self.runtime.fail == "before_first" and number == 0:
                raise ModelFailed("the model's process died", "crash")
            if self.runtime.fail == "mid_stream" and number == 1:
                raise ModelFailed("the model's process died", "crash")
            if self.runtime.fail == "stall" and number == 0:
                await asyncio.sleep(self.first)
                raise ModelFailed(f"no its first token within {self.first:.1f} s", "timeout")
            self.sent.append(piece)
            yield piece
        self.result = self._done("stop")
        yield self.result

    def _done(self, finish: str) -> Generated:
        elapsed = (time.perf_counter() - self.started) * 1000
        return Generated("".join(self.sent), 10, len(self.sent), min(elapsed, 1.0), elapsed, finish)

    async def cancel(self, timeout: float = 5.0) -> Generated | None:
        self.runtime.cancelled += 1
        self.result = self.result or self._done("cancelled")
        return self.result

    async def close(self) -> None:
        return None
