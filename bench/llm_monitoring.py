"""How often the LLM traffic check cries wolf, and how often it sees a real change.

The reference is the shape of the demo assistant's evaluation: 28 answers (question and answer
lengths, tokens, the best passage's score, a few out-of-knowledge questions and refusals). Each
trial draws a live window from the same distribution (healthy) or from a shifted one and runs the
check's own comparison (``monitoring.llm_traffic.compare_traffic``: Evidently's drift preset on the
descriptors, the one-sided Fisher tests on the rates) with the shipped policy
(``policies/drift.yaml``, ``llm``). Bounded: TRIALS windows per case, seeded.

    .venv/bin/python bench/llm_monitoring.py
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TRIALS = 40
WINDOW = 60  # answers in a live window
REFERENCE = 28


def _rows(
    n: int, pick: random.Random, *, outside: float = 0.15, longer: float = 1.0, refused: float = 0.1
) -> pd.DataFrame:
    from conveyor.monitoring.llm_traffic import live_frame

    rows = []
    for _ in range(n):
        out = pick.random() < outside
        words = max(1, int(pick.gauss(9, 3)))
        answer = max(1, int(pick.gauss(28, 10) * longer))
        rows.append(
            {
                "question": " ".join(["word"] * words) + "?",
                "answer": " ".join(["said"] * answer),
                "completion_tokens": min(64, int(answer * 1.3)),
                "retrieval_score": pick.uniform(0.0, 0.7) if out else pick.uniform(1.0, 3.5),
                "refused": pick.random() < refused,
                "status": "ok",
            }
        )
    return live_frame(pd.DataFrame(rows), 0.8)


def main() -> None:
    from conveyor.monitoring.llm_traffic import compare_traffic
    from conveyor.policies.drift import load_drift_policy

    policy = load_drift_policy(Path(__file__).resolve().parents[1] / "policies").llm
    cases = {
        "healthy": {},
        "out-of-knowledge 15% -> 50%": {"outside": 0.5},
        "answers 1.6x longer": {"longer": 1.6},
        "refusals 10% -> 40%": {"refused": 0.4},
    }
    folder = Path(tempfile.mkdtemp(prefix="bench-llm-monitoring-"))
    print(
        f"reference {REFERENCE} answers, windows of {WINDOW}, {TRIALS} trials each; policy: drift share "
        f"{policy.drift.share:g} ({policy.drift.method} at {policy.drift.threshold:g}), rates {policy.rates}, "
        f"significance {policy.significance:g}"
    )
    for name, shift in cases.items():
        started = time.perf_counter()
        drift = quality = 0
        for trial in range(TRIALS):
            pick = random.Random(trial)
            reference = _rows(REFERENCE, pick)
            window = _rows(WINDOW, pick, **shift)
            _, share, rates, _, html, snapshot = compare_traffic(reference, window, policy, folder, f"t{trial}")
            html.unlink()  # about 4 MB each
            snapshot.unlink()
            quality += any(r.breached for r in rates)
            drift += share >= policy.drift.share
        seconds = (time.perf_counter() - started) / TRIALS
        print(
            f"{name:<30} quality breach {quality / TRIALS:6.1%}   drift {drift / TRIALS:6.1%}   "
            f"({seconds * 1000:.0f} ms a check)"
        )


if __name__ == "__main__":
    main()
