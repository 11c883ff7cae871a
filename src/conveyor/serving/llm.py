"""A release's language model in this process (llama.cpp), and what a release's prompt is made of.

``LocalModel`` loads a GGUF file and streams a generation, counted and timed where it happens;
one generation at a time per loaded model (llama.cpp's context is not thread-safe, so calls are
serialised by a lock). ``LocalRuntime`` puts it behind the runtime protocol (``serving.runtime``).
``render``, ``system_prompt`` and ``model_request`` make the signed prompt into what the model is
given; ``open_retriever`` opens a release's knowledge index.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from conveyor.policies.errors import ModelFailed, SignatureInvalid
from conveyor.policies.llm import VARIABLE
from conveyor.serving.retrieval import Retrieved, Retriever, render_passages
from conveyor.serving.runtime import Generated, GenerateRuntime, Generation, Request

__all__ = ["LocalModel", "LocalRuntime", "model_request", "open_retriever", "render", "system_prompt"]


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


class LocalRuntime(GenerateRuntime):
    """A ``LocalModel`` in this process behind the runtime protocol: what the evaluation and
    ``conveyor llm ask`` answer with. Each generation runs in a thread of its own and streams its
    pieces to the caller's event loop; ``fresh`` drops llama.cpp's cached prompt before each one,
    so time to first token is the prompt's whole cost."""

    def __init__(self, model: LocalModel, *, fresh: bool = True) -> None:
        self.model, self.fresh = model, fresh
        self.threads = model.threads

    def set_threads(self, threads: int) -> None:
        self.model.set_threads(threads)
        self.threads = self.model.threads

    def wait_loaded(self, timeout: float = 120) -> None:
        return None  # loaded when it was made

    def close(self, drain_seconds: float = 10.0) -> None:
        return None  # the model is freed with this object

    async def begin(
        self, request: Request, params: dict[str, Any], *, first_token_seconds: float, total_seconds: float
    ) -> Generation:
        loop = asyncio.get_running_loop()
        generation = _LocalGeneration(first_token_seconds, total_seconds)

        def run() -> None:
            put = generation.queue.put_nowait
            try:
                for piece, done in self.model.stream(
                    request, params, fresh=self.fresh, cancelled=generation.stop.is_set
                ):
                    loop.call_soon_threadsafe(put, ("done", done) if done is not None else ("piece", piece))
            except Exception as exc:  # the runtime's own failure: the caller gets it as ModelFailed
                loop.call_soon_threadsafe(put, ("error", f"{type(exc).__name__}: {exc}"))

        generation.thread = threading.Thread(target=run, name="local-generation", daemon=True)
        generation.thread.start()
        return generation


class _LocalGeneration(Generation):
    def __init__(self, first_token_seconds: float, total_seconds: float) -> None:
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.result: Generated | None = None
        self._first, self._deadline = first_token_seconds, time.monotonic() + total_seconds
        self._pieces = 0

    def __aiter__(self) -> AsyncIterator[str | Generated]:
        return self._items()

    async def _items(self) -> AsyncIterator[str | Generated]:
        while self.result is None:
            yield await self._next()

    async def _next(self) -> str | Generated:
        timeout = self._first if self._pieces == 0 else max(0.0, self._deadline - time.monotonic())
        try:
            kind, payload = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            self.stop.set()
            what = "its first token" if self._pieces == 0 else "its whole answer"
            raise ModelFailed(f"no {what} within {timeout:.1f} s", "timeout") from None
        if kind == "piece":
            self._pieces += 1
            return str(payload)
        if kind == "done":
            self.result = payload
            return payload
        raise ModelFailed(str(payload), "error")

    async def cancel(self, timeout: float = 5.0) -> Generated | None:
        self.stop.set()
        try:
            async with asyncio.timeout(timeout):
                while self.result is None:
                    await self._next()
        except (ModelFailed, TimeoutError):
            pass
        return self.result

    async def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join)
