"""LLM releases: build time by stage (cold and warm), signing and verifying the GGUF against hashing it
alone, evaluation time per case, and the models in-process (load, time to first token, tokens/s).

    .venv/bin/python bench/llm_release.py [--rounds 3]

Baselines are measured in the same run: hashing the weights file with hashlib (what signing cannot
beat: it must read and hash every byte), and llama.cpp called directly (``Llama`` with the same
threads and context) for the in-process figures. Each generation drops the prompt cache first
(``llm.reset()``) and the questions vary, so time to first token is the prompt's real cost.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "What is a canary release?",
    "How does a rollback work?",
    "Who signs a model?",
    "What is drift?",
    "Say hello.",
    "What can you help me with?",
]


def _copy_project(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in ("assistant.yaml", "assistant-fallback.yaml", "uv.lock"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "llm", root / "llm")
    shutil.copytree(ROOT / "policies", root / "policies", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root / "assistant.yaml"


def builds(scratch: Path) -> tuple[dict[str, float], dict[str, float], int]:
    from conveyor.api import Workspace

    project = _copy_project(scratch / "project")
    ws = Workspace.open(project, home=str(scratch / "home"), actor="bench")
    ws.stores.prepare()
    started = time.perf_counter()
    cold = ws.build_release()
    cold_total = time.perf_counter() - started
    template = project.parent / "llm" / "prompts" / "assistant.txt"
    template.write_text(template.read_text().replace("one or two short sentences", "one short sentence"))
    started = time.perf_counter()
    warm = ws.build_release()  # a prompt-only change: the weights are in the store already
    warm_total = time.perf_counter() - started
    cases = 20
    return {**cold.stages, "total": cold_total}, {**warm.stages, "total": warm_total}, cases


def signing(weights: Path, rounds: int) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from conveyor.registry.signing import sign_model, verify_model

    size_mb = weights.stat().st_size / 1e6
    with tempfile.TemporaryDirectory(prefix="bench-sign-") as scratch:
        folder = Path(scratch) / "release"
        (folder / "weights").mkdir(parents=True)
        os.link(weights, folder / "weights" / weights.name) if _same_fs(weights, folder) else shutil.copy(
            weights, folder / "weights" / weights.name
        )
        (folder / "release.json").write_text("{}")
        key = ec.generate_private_key(ec.SECP256R1())
        private = Path(scratch) / "key.pem"
        public = Path(scratch) / "key.pub"
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        hashing, signed, verified = [], [], []
        for _ in range(rounds):  # alternated, so a noisy moment hits all three alike
            started = time.perf_counter()
            digest = hashlib.sha256()
            with (folder / "weights" / weights.name).open("rb") as handle:
                for block in iter(lambda: handle.read(4 << 20), b""):
                    digest.update(block)
            hashing.append(time.perf_counter() - started)
            started = time.perf_counter()
            sign_model(folder, private)
            signed.append(time.perf_counter() - started)
            started = time.perf_counter()
            verify_model(folder, public)
            verified.append(time.perf_counter() - started)
    h, s, v = (statistics.median(x) for x in (hashing, signed, verified))
    print(f"\nSigning and verifying the {size_mb:.1f} MB GGUF (median of {rounds}):")
    print(f"  sha256 alone (hashlib)   {h:6.3f} s  {size_mb / h:7.0f} MB/s  (baseline)")
    print(f"  sign (model-signing)     {s:6.3f} s  {size_mb / s:7.0f} MB/s  {s / h:5.2f}x the hash")
    print(f"  verify (model-signing)   {v:6.3f} s  {size_mb / v:7.0f} MB/s  {v / h:5.2f}x the hash")


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def in_process(path: Path, label: str, *, chat_format: str | None, completion: bool, rounds: int) -> None:
    from llama_cpp import Llama

    from conveyor.serving.llm import LocalModel

    started = time.perf_counter()
    bare = Llama(model_path=str(path), n_ctx=2048, n_threads=2, verbose=False, chat_format=chat_format)
    bare_load = time.perf_counter() - started
    ours = LocalModel(path, context=2048, threads=2, chat_format=chat_format)
    system = "You are the help assistant of Conveyor. Answer in one or two short sentences."
    ttft_ours, tps_ours, ttft_bare, tps_bare = [], [], [], []
    for i in range(rounds * len(QUESTIONS)):
        question = QUESTIONS[i % len(QUESTIONS)] + " " * (i // len(QUESTIONS))  # vary the prompt
        request = (
            f"{system}\n\nUser: {question}\nAssistant:"
            if completion
            else [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ]
        )
        done = ours.generate(request, {"max_tokens": 48})
        ttft_ours.append(done.ttft_ms)
        if done.completion_tokens > 1:
            tps_ours.append((done.completion_tokens - 1) / ((done.total_ms - done.ttft_ms) / 1000))
        bare.reset()
        started = time.perf_counter()
        first, count = None, 0
        stream = (
            bare.create_completion(request, max_tokens=48, temperature=0, stream=True)
            if isinstance(request, str)
            else bare.create_chat_completion(messages=request, max_tokens=48, temperature=0, stream=True)  # type: ignore[arg-type]
        )
        for chunk in stream:
            choice = chunk["choices"][0]  # type: ignore[index]
            if choice.get("text") or choice.get("delta", {}).get("content"):
                first = first or time.perf_counter()
                count += 1
        ended = time.perf_counter()
        if first is not None:
            ttft_bare.append((first - started) * 1000)
            if count > 1:
                tps_bare.append((count - 1) / (ended - first))
    m = statistics.median
    print(
        f"\n{label} in-process, 2 threads, greedy, 48 new tokens, prompt cache dropped each call ({len(ttft_ours)} calls):"
    )
    print(f"  load                     ours {ours.load_seconds:5.2f} s   llama.cpp direct {bare_load:5.2f} s")
    print(
        f"  time to first token p50  ours {m(ttft_ours):5.0f} ms  direct {m(ttft_bare):5.0f} ms  ratio {m(ttft_ours) / m(ttft_bare):4.2f}"
    )
    print(
        f"  decode tokens/s p50      ours {m(tps_ours):5.1f}     direct {m(tps_bare):5.1f}     ratio {m(tps_ours) / m(tps_bare):4.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as scratch:
        cold, warm, cases = builds(Path(scratch))
        print("Release build by stage (s): cold = fresh stores, warm = a prompt-only change after it")
        for stage in cold:
            print(f"  {stage:10s} cold {cold[stage]:6.2f}   warm {warm.get(stage, 0):6.2f}")
        print(
            f"  evaluation per case: cold {cold['evaluate'] / cases:.2f} s, warm {warm['evaluate'] / cases:.2f} s ({cases} cases)"
        )
        weights = next((Path(scratch) / "home" / "weights").glob("*.gguf"))
        signing(weights, args.rounds)
        in_process(weights, "SmolLM2-135M-Instruct Q4_1", chat_format=None, completion=False, rounds=args.rounds)
        from conveyor.policies.llm import load_llm_project
        from conveyor.registry.weights import resolve_weights

        fallback = load_llm_project(ROOT / "assistant-fallback.yaml")
        gemma = resolve_weights(fallback.model, Path(scratch) / "home" / "weights", lock=ROOT / "uv.lock")
        in_process(gemma.path, "Gemma-3-270M Q4_K_M (base)", chat_format=None, completion=True, rounds=args.rounds)


if __name__ == "__main__":
    main()
