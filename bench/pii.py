"""PII detection on our labelled set (llm/guardrails/pii.jsonl): precision, recall and time per check,
for the pattern rules alone (the baseline) and for the repository's policy (rules + Presidio).

    .venv/bin/python bench/pii.py

A labelled value is found when a detected span overlaps it; a detected span is right when it
overlaps a labelled value. Rows without personal data count only against precision.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conveyor.policies.guardrails import GuardrailPolicy
from conveyor.policies.loading import load_policy
from conveyor.serving.guardrails import Guardrails


def measure(guard: Guardrails, rows: list[dict]) -> dict[str, float]:
    found = labelled = right = spans = 0
    times = []
    for row in rows:
        text = row["text"]
        started = time.perf_counter()
        detected = guard.pii_spans(text)
        times.append((time.perf_counter() - started) * 1000)
        labels = [(text.index(v), text.index(v) + len(v)) for v in row["pii"]]
        labelled += len(labels)
        found += sum(any(s.start < end and s.end > start for s in detected) for start, end in labels)
        spans += len(detected)
        right += sum(any(s.start < end and s.end > start for start, end in labels) for s in detected)
    return {
        "precision": right / spans if spans else 1.0,
        "recall": found / labelled if labelled else 1.0,
        "spans": spans,
        "labelled": labelled,
        "p50_ms": statistics.median(times),
        "p95_ms": sorted(times)[int(0.95 * (len(times) - 1))],
    }


def main() -> None:
    rows = [json.loads(line) for line in (ROOT / "llm" / "guardrails" / "pii.jsonl").read_text().splitlines() if line]
    policy = load_policy(ROOT / "policies" / "guardrails.yaml", GuardrailPolicy)
    rules_only = policy.model_copy(update={"output": policy.output.model_copy(update={"presidio": None})})
    started = time.perf_counter()
    full = Guardrails(policy)
    load = time.perf_counter() - started
    print(f"PII on {len(rows)} labelled texts ({sum(bool(r['pii']) for r in rows)} with personal data):")
    for label, guard in (
        ("pattern rules alone (baseline)", Guardrails(rules_only)),
        ("rules + Presidio (policy)", full),
    ):
        m = measure(guard, rows)
        print(
            f"  {label:32s} precision {m['precision']:.2f}  recall {m['recall']:.2f}  "
            f"({m['spans']} spans, {m['labelled']} labelled)  per check p50 {m['p50_ms']:.1f} ms p95 {m['p95_ms']:.1f} ms"
        )
    print(f"  Presidio and its spaCy model load once per process: {load:.1f} s")


if __name__ == "__main__":
    main()
