"""An LLM release, running: the local model (llama.cpp) behind the release's prompt and guardrails.

``LlmRelease.open(folder)`` reads a release folder that has been verified (``release.json``, the
prompt, the guardrail policy, the weights) and loads the weights with llama.cpp. ``answer``
applies the input guardrails, renders the signed prompt (never a registry alias), generates
(streamed, so time to first token is measured where it happens), applies the output
guardrails, and returns the answer with its token counts and timings. One generation at a time
per loaded model: llama.cpp's context is not thread-safe, so calls are serialised by a lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.policies.errors import SignatureInvalid
from conveyor.policies.guardrails import GuardrailPolicy
from conveyor.policies.llm import VARIABLE
from conveyor.serving.guardrails import Guardrails
from conveyor.serving.retrieval import Retrieved, Retriever, render_passages

__all__ = ["Generated", "LlmRelease", "LocalModel", "Reply", "render"]


def render(template: str, variables: dict[str, str]) -> str:
    """``{{name}}`` replaced by its value (a missing variable is a bug: the config check refused it)."""
    return VARIABLE.sub(lambda m: variables[m.group(1)], template)


def system_prompt(template: str, manifest: dict[str, Any]) -> str:
    """The release's own words: the template with no question and no passages (what the leak rule guards)."""
    return render(template, manifest["prompt"]["variables"] | {"question": "", "passages": ""}).strip()


def open_retriever(folder: Path, manifest: dict[str, Any]) -> Retriever | None:
    """The release's retrieval index (a verified folder of it), or None when it has no knowledge base."""
    knowledge = manifest.get("knowledge")
    if not knowledge:
        return None
    try:
        return Retriever.open(
            folder / knowledge["dir"], top_k=int(knowledge["top_k"]), min_score=float(knowledge["min_score"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureInvalid(f"{folder}'s retrieval index cannot be read: {exc}.", hint="Do not use it.") from None


def model_request(
    template: str, manifest: dict[str, Any], question: str, retrieved: Retrieved | None
) -> list[dict[str, str]] | str:
    """What the model is given for ``question``: chat turns (the system prompt with the passages,
    then the question), or (completion mode) the template around the question."""
    variables = manifest["prompt"]["variables"] | {"passages": render_passages(retrieved) if retrieved else ""}
    if str(manifest["runtime"].get("mode", "chat")) == "completion":
        return render(template, variables | {"question": question})
    system = render(template, variables | {"question": ""}).strip()
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


@dataclass(frozen=True)
class Generated:
    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float  # request to first generated text
    total_ms: float
    finish_reason: str


_log_callback: list[Any] = []  # the callback llama.cpp holds, kept alive with this module


def _quiet_runtime() -> None:
    """Send llama.cpp's own log lines (some printed whatever its verbosity) to Python's logging, at DEBUG."""
    if _log_callback:
        return
    import ctypes
    import logging

    import llama_cpp

    log = logging.getLogger("conveyor.llama_cpp")

    @llama_cpp.llama_log_callback
    def forward(level: int, text: bytes, user_data: Any) -> None:
        log.debug("%s", text.decode("utf-8", "replace").rstrip())

    _log_callback.append(forward)
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


class LocalModel:
    """A GGUF model in this process (llama.cpp), greedy by default, one call at a time."""

    def __init__(
        self, path: Path, *, context: int = 2048, threads: int = 2, seed: int = 0, chat_format: str | None = None
    ) -> None:
        from llama_cpp import Llama

        _quiet_runtime()
        started = time.perf_counter()
        self.llm = Llama(
            model_path=str(path),
            n_ctx=context,
            n_threads=threads,
            n_threads_batch=threads,  # the prompt too (llama.cpp's default is every core)
            seed=seed,
            verbose=False,
            n_gpu_layers=0,
            chat_format=chat_format,
        )
        self.load_seconds = time.perf_counter() - started
        self.context = context
        self._lock = threading.Lock()

    @property
    def threads(self) -> int:
        from llama_cpp import llama_n_threads

        return int(llama_n_threads(self.llm.ctx))

    def set_threads(self, threads: int) -> None:
        """Generate (and read prompts) on ``threads`` threads from the next token on."""
        from llama_cpp import llama_set_n_threads

        llama_set_n_threads(self.llm.ctx, threads, threads)

    def count(self, text: str) -> int:
        """Tokens ``text`` takes (no special tokens added)."""
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=False))

    def stream(
        self,
        request: list[dict[str, str]] | str,
        params: dict[str, Any],
        *,
        fresh: bool = True,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[tuple[str, Generated | None]]:
        """Yield (text piece, None) as tokens come, then ("", the finished generation).

        ``cancelled`` is asked after each piece: once it says so, generation stops there and the
        finished generation (``finish_reason`` "cancelled") counts the tokens made so far.

        ``request`` is chat messages (the model's chat template applies) or a whole prompt (a
        plain completion, for base models).

        ``fresh`` drops llama.cpp's cached prompt prefix first, so time to first token is the
        real cost of the prompt (a benchmark and the evaluation want that; serving may not)."""
        with self._lock:
            if fresh:
                self.llm.reset()
            started = time.perf_counter()
            first: float | None = None
            pieces: list[str] = []
            finish = "stop"
            usage: Any = None
            options: dict[str, Any] = {
                "stream": True,
                "temperature": float(params.get("temperature", 0.0)),
                "top_p": float(params.get("top_p", 1.0)),
                "max_tokens": int(params.get("max_tokens", 96)),
                "seed": int(params.get("seed", 0)),
                "stop": list(params.get("stop", ())) or None,
            }
            chunks: Any = (
                self.llm.create_completion(request, **options)
                if isinstance(request, str)
                else self.llm.create_chat_completion(messages=request, **options)  # type: ignore[arg-type]
            )
            for event in chunks:  # llama-cpp-python's TypedDicts: the stream's chunks
                choice = event["choices"][0]
                piece = str(choice.get("text") or choice.get("delta", {}).get("content") or "")
                if piece:
                    if first is None:
                        first = time.perf_counter()
                    pieces.append(piece)
                    yield piece, None
                finish = choice.get("finish_reason") or finish
                usage = event.get("usage") or usage
                if piece and cancelled is not None and cancelled():
                    finish = "cancelled"
                    chunks.close()  # the runtime's generator: nothing more is sampled
                    break
            ended = time.perf_counter()
            text = "".join(pieces)
            # The text re-tokenises to the tokens generated (a stop token is not counted, as OpenAI
            # does not); the context then holds the prompt and every generated token but the last
            # one when the length limit (or a cancellation) stopped it (sampled, never evaluated).
            completion = usage["completion_tokens"] if usage else self.count(text)
            unevaluated = 1 if finish in ("length", "cancelled") else 0
            prompt_tokens = usage["prompt_tokens"] if usage else max(self.llm.n_tokens - completion + unevaluated, 0)
            yield (
                "",
                Generated(
                    text=text,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=int(completion),
                    ttft_ms=((first or ended) - started) * 1000,
                    total_ms=(ended - started) * 1000,
                    finish_reason=str(finish),
                ),
            )

    def generate(self, request: list[dict[str, str]] | str, params: dict[str, Any], *, fresh: bool = True) -> Generated:
        finished: Generated | None = None
        for _, done in self.stream(request, params, fresh=fresh):  # run to its end: that releases the lock
            finished = done or finished
        assert finished is not None  # the stream's last item is the finished generation
        return finished


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
    raw: str | None = field(default=None, repr=False)  # the model's own text, before output rules
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


class LlmRelease:
    """A verified release folder, loaded: model, system prompt, parameters, guardrails."""

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        template: str,
        model: LocalModel,
        guardrails: Guardrails,
        retriever: Retriever | None = None,
    ) -> None:
        self.folder = folder
        self.retriever = retriever
        self.manifest = manifest
        self.template = template
        self.model = model
        self.guardrails = guardrails
        self.system_prompt = guardrails.system_prompt
        self.params: dict[str, Any] = dict(manifest["generation"])
        self.mode = str(manifest["runtime"].get("mode", "chat"))

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
        system = system_prompt(template, manifest)
        retriever = open_retriever(folder, manifest)
        runtime = manifest["runtime"]
        model = LocalModel(
            weights,
            context=int(runtime["context"]),
            threads=threads or int(runtime["threads"]),
            seed=int(manifest["generation"].get("seed", 0)),
            chat_format=runtime.get("chat_format"),
        )
        return cls(folder, manifest, template, model, Guardrails(policy, system), retriever)

    def request(self, question: str, retrieved: Retrieved | None = None) -> list[dict[str, str]] | str:
        """What the model is given: chat turns, or (completion mode) the template around the question."""
        return model_request(self.template, self.manifest, question, retrieved)

    def answer(self, question: str, *, fresh: bool = True, max_tokens: int | None = None) -> Reply:
        """The answer a client gets for ``question``: guarded on the way in and on the way out."""
        started = time.perf_counter()
        checked = self.guardrails.check_input(question)
        refusal = self.guardrails.policy.refusal
        limit = int(self.manifest["limits"]["max_input_tokens"])
        blocked = checked.blocked_by
        tokens = self.model.count(checked.text)
        if blocked is None and tokens > limit:
            blocked = "input.max_tokens"
        if blocked is not None:
            elapsed = (time.perf_counter() - started) * 1000
            return Reply(
                refusal, tokens, 0, elapsed, elapsed, blocked_by=blocked, refused=True, finish_reason="blocked"
            )
        params = dict(self.params)
        if max_tokens is not None:
            params["max_tokens"] = min(max_tokens, int(self.manifest["limits"]["max_output_tokens"]))
        before = (time.perf_counter() - started) * 1000  # the input checks
        retrieved = self.retriever.search(checked.text) if self.retriever is not None else None
        done = self.model.generate(self.request(checked.text, retrieved), params, fresh=fresh)
        checking = time.perf_counter()
        verdict = self.guardrails.check_output(done.text)
        after = (time.perf_counter() - checking) * 1000
        # Timed from this call's own work (the input checks, the generation once the model was
        # free, the output checks): waiting for another call's generation is not this answer's cost.
        return Reply(
            text=verdict.text,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            ttft_ms=before + done.ttft_ms,
            total_ms=before + done.total_ms + after,
            blocked_by=verdict.blocked_by,
            redactions=verdict.redactions,
            refused=verdict.blocked or verdict.refused,
            finish_reason="blocked" if verdict.blocked else done.finish_reason,
            raw=done.text,
            passages=tuple(p.record() for p in retrieved.passages) if retrieved else (),
            retrieval_score=retrieved.best_score if retrieved else None,
        )
