"""One answer path: a prepared request, answered by a release's runtime through its output guardrails.

The gateway answers its clients with ``generate`` (streamed or whole), after
``serving.prepare.prepare``; the evaluation and ``conveyor llm ask`` answer through the same two
functions (``LlmRelease.answer``, the release's model in this process behind the same runtime
protocol): what the release gate measures is what a client gets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from conveyor.policies.errors import ModelFailed, RequestRefused, SignatureInvalid
from conveyor.policies.guardrails import GuardrailPolicy
from conveyor.serving.guardrails import Guardrails, StreamGuard
from conveyor.serving.llm import LocalModel, LocalRuntime, open_retriever, system_prompt
from conveyor.serving.openai_api import ChatRequest
from conveyor.serving.prepare import Prepared, prepare
from conveyor.serving.releases import ServedRelease, VerifiedRelease
from conveyor.serving.runtime import Generated
from conveyor.serving.stream import AnswerStream, Outcome

__all__ = ["LlmRelease", "Reply", "generate", "run_to_end"]

T = TypeVar("T")

_EVALUATION_SECONDS = 600.0  # an in-process answer's own limit (the evaluation has its deadline too)


async def generate(
    model: ServedRelease,
    role: str,
    prepared: Prepared,
    *,
    first_token_seconds: float,
    total_seconds: float,
    stream: AnswerStream | None = None,
    gone: asyncio.Event | None = None,
    arrived: float | None = None,
) -> Outcome:
    """``model``'s answer to a prepared request, through the release's output guardrails: streamed
    to the client when ``stream`` (nothing is sent that a rule could still withhold), whole
    otherwise. A client that is ``gone`` cancels the generation between two pieces; ``arrived``
    (``time.perf_counter()`` when the request came) times the first text the client got.
    ``ModelFailed`` when the runtime fails or answers nothing."""
    gone = gone or asyncio.Event()
    arrived = time.perf_counter() if arrived is None else arrived
    generation = await model.runtime.begin(
        prepared.request, prepared.params, first_token_seconds=first_token_seconds, total_seconds=total_seconds
    )
    guard = StreamGuard(model.verified.guardrails) if stream is not None else None
    done: Generated | None = None
    cancelled = False
    try:
        async for item in generation:
            if isinstance(item, Generated):
                done = item
                break
            if gone.is_set():
                done, cancelled = await generation.cancel(), True
                break
            if guard is not None and stream is not None:
                text = guard.feed(item)
                if guard.blocked_by is not None:
                    done = await generation.cancel()
                    break
                if text:
                    await stream.send(text)
    finally:
        await generation.close()
    if done is None:
        raise ModelFailed("the model's stream ended without its counts", "contract")
    outcome = Outcome(
        model,
        role,
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
        finish_reason=done.finish_reason,
        model_ttft_ms=done.ttft_ms,
        model_ms=done.total_ms,
        redactions=prepared.redactions,
    )
    if cancelled:
        outcome.status, outcome.finish_reason = "cancelled", "cancelled"
        outcome.text = "".join(guard.shown) if guard is not None else ""
        return outcome
    if not done.text.strip() and done.finish_reason != "cancelled":
        raise ModelFailed("its answer was empty", "contract")
    if guard is not None and stream is not None:
        if guard.blocked_by is None:
            rest = guard.finish()
            if rest:
                await stream.send(rest)
        outcome.text = "".join(guard.shown)
        outcome.blocked_by, outcome.refused = guard.blocked_by, guard.refused
        outcome.redactions = (*prepared.redactions, *guard.redactions)
        outcome.ttft_ms = stream.first_ms
    else:
        verdict = model.verified.guardrails.check_output(done.text)
        outcome.text, outcome.blocked_by, outcome.refused = (
            verdict.text,
            verdict.blocked_by,
            verdict.refused or verdict.blocked,
        )
        outcome.redactions = (*prepared.redactions, *verdict.redactions)
        outcome.ttft_ms = (time.perf_counter() - arrived) * 1000 - (done.total_ms - done.ttft_ms)
    if outcome.blocked_by is not None:
        outcome.status, outcome.finish_reason = "blocked", "content_filter"
        if stream is None:
            outcome.text = model.verified.guardrails.policy.refusal
    return outcome


@dataclass(frozen=True)
class Reply:
    """One answer of a release, as a client would get it, with what it cost and what fired."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    total_ms: float
    blocked_by: str | None = None  # the guardrail rule that withheld the request or the answer
    redactions: tuple[str, ...] = ()
    refused: bool = False  # blocked, or the model refused by itself
    finish_reason: str = "stop"
    passages: tuple[dict[str, Any], ...] = ()  # the knowledge base's passages the model was given
    retrieval_score: float | None = None  # the best passage's score (None: the release has no knowledge base)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": round(self.ttft_ms, 2),
            "total_ms": round(self.total_ms, 2),
            "blocked_by": self.blocked_by,
            "redactions": list(self.redactions),
            "refused": self.refused,
            "finish_reason": self.finish_reason,
            "passages": [p["id"] for p in self.passages],
            "documents": sorted({p["document"] for p in self.passages}),
            "retrieval_score": None if self.retrieval_score is None else round(self.retrieval_score, 3),
        }


def run_to_end(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end from synchronous code, also where an event loop already runs in
    this thread (a notebook's): then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="answer") as pool:
        return pool.submit(asyncio.run, work).result()


class LlmRelease:
    """A verified release folder, loaded in this process: its model behind ``LocalRuntime``, its
    prompt, parameters, guardrails and knowledge index; ``answer`` is a client's answer."""

    def __init__(self, verified: VerifiedRelease, model: LocalModel) -> None:
        self.verified = verified
        self.model = model
        self.runtime = LocalRuntime(model)
        self.served = ServedRelease(verified, self.runtime)
        self.manifest, self.guardrails = verified.manifest, verified.guardrails

    @classmethod
    def open(cls, folder: Path, *, threads: int | None = None) -> LlmRelease:
        """Load the release in ``folder``; call only on a folder whose signature was verified."""
        import yaml

        try:
            manifest = json.loads((folder / "release.json").read_text())
            template = (folder / manifest["prompt"]["file"]).read_text(encoding="utf-8")
            policy = GuardrailPolicy.model_validate(
                yaml.safe_load((folder / manifest["guardrails"]["file"]).read_text(encoding="utf-8"))
            )
            weights = folder / manifest["weights"]["file"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SignatureInvalid(
                f"{folder} is not a complete LLM release ({type(exc).__name__}: {exc}).", hint="Do not use it."
            ) from None
        retriever = open_retriever(folder, manifest)
        runtime = manifest["runtime"]
        model = LocalModel(
            weights,
            context=int(runtime["context"]),
            threads=threads or int(runtime["threads"]),
            seed=int(manifest["generation"].get("seed", 0)),
            chat_format=runtime.get("chat_format"),
        )
        verified = VerifiedRelease(
            str(manifest.get("name", folder.name)),
            "local",
            folder,
            "",
            "",
            manifest,
            template,
            Guardrails(policy, system_prompt(template, manifest)),
            model.llm,
            retriever,
        )
        return cls(verified, model)

    def answer(self, question: str, *, fresh: bool = True, max_tokens: int | None = None) -> Reply:
        """The answer a client gets for ``question``, by the gateway's own path (``prepare``, then
        ``generate``): guarded on the way in and on the way out. ``fresh``: no cached prompt."""
        started = time.perf_counter()
        self.runtime.fresh = fresh
        release = self.verified
        body: dict[str, Any] = {"model": release.name, "messages": [{"role": "user", "content": question}]}
        if max_tokens is not None:
            body["max_tokens"] = min(max_tokens, int(release.limits["max_output_tokens"]))
        request = ChatRequest.model_validate(body)
        try:
            prepared = prepare(request, release, chat=True)
        except RequestRefused as exc:  # longer than the release takes: withheld, where the gateway refuses it
            if exc.code != "context_length_exceeded":
                raise
            return self._withheld(started, "input.max_tokens", release.guardrails.check_input(question).redactions)
        if prepared.blocked_by is not None:
            return self._withheld(started, prepared.blocked_by, prepared.redactions)
        try:
            outcome = run_to_end(
                generate(
                    self.served,
                    "evaluation",
                    prepared,
                    first_token_seconds=_EVALUATION_SECONDS,
                    total_seconds=_EVALUATION_SECONDS,
                    arrived=started,
                )
            )
        except ModelFailed as exc:  # an answer that fails counts as a failed case, not a failed evaluation
            elapsed = (time.perf_counter() - started) * 1000
            return Reply("", 0, 0, elapsed, elapsed, redactions=prepared.redactions, finish_reason=f"error: {exc.kind}")
        return Reply(
            text=outcome.text,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            ttft_ms=outcome.ttft_ms if outcome.ttft_ms is not None else 0.0,
            total_ms=(time.perf_counter() - started) * 1000,
            blocked_by=outcome.blocked_by,
            redactions=outcome.redactions,
            refused=outcome.refused,
            finish_reason="blocked" if outcome.blocked_by else outcome.finish_reason,
            passages=prepared.passages,
            retrieval_score=prepared.retrieval_score,
        )

    def _withheld(self, started: float, rule: str, redactions: tuple[str, ...]) -> Reply:
        """A question the input guardrails withheld: the model never saw it (no tokens, as the gateway counts)."""
        elapsed = (time.perf_counter() - started) * 1000
        refusal = self.guardrails.policy.refusal
        return Reply(
            refusal,
            0,
            0,
            elapsed,
            elapsed,
            blocked_by=rule,
            redactions=tuple(redactions),
            refused=True,
            finish_reason="blocked",
        )
