"""Evaluate: the release answers every case of its evaluation sets, offline scorers judge the answers.

The cases run one at a time through the release as a client would get it (input guardrails,
the signed prompt, the model, output guardrails), each with llama.cpp's prompt cache dropped so
time to first token is honest. ``mlflow.genai.evaluate`` records each case as a trace with the
scorers' assessments on the build's MLflow run; the scorers are rule-based (``SCORERS``), so no
judge model or network is needed. The figures the gate reads are computed from the same scorer
functions (``summarise``), and the whole run has a deadline.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from conveyor.policies.errors import GateFailed
from conveyor.policies.llm import EvalCase, Expectations

__all__ = [
    "SCORERS",
    "CaseResult",
    "EvaluationResult",
    "evaluate_release",
    "score_content",
    "score_format",
    "score_length",
    "score_refusal",
    "score_retrieval",
    "summarise",
]


# -- the scorers: pure functions of one answer and its expectations (None: the case does not ask) --


def score_format(answer: dict[str, Any], expect: Expectations) -> bool | None:
    if expect.regex is None and expect.json_schema is None:
        return None
    text = answer["text"]
    if expect.regex is not None and not re.search(expect.regex, text, re.IGNORECASE | re.DOTALL):
        return False
    if expect.json_schema is not None:
        import jsonschema

        try:
            jsonschema.validate(json.loads(text), expect.json_schema)
        except (ValueError, jsonschema.ValidationError):
            return False
    return True


def score_content(answer: dict[str, Any], expect: Expectations) -> bool | None:
    if not expect.contains and not expect.not_contains:
        return None
    text = answer["text"].lower()
    return all(c.lower() in text for c in expect.contains) and not any(c.lower() in text for c in expect.not_contains)


def score_refusal(answer: dict[str, Any], expect: Expectations) -> bool | None:
    return None if expect.refuse is None else bool(answer["refused"]) == expect.refuse


def score_length(answer: dict[str, Any], expect: Expectations) -> bool | None:
    return None if expect.max_tokens is None else int(answer["completion_tokens"]) <= expect.max_tokens


def score_retrieval(answer: dict[str, Any], expect: Expectations) -> bool | None:
    if not expect.sources:
        return None
    return bool(set(answer.get("documents") or ()) & set(expect.sources))


SCORERS: dict[str, Callable[[dict[str, Any], Expectations], bool | None]] = {
    "format": score_format,
    "content": score_content,
    "refusal": score_refusal,
    "length": score_length,
    "retrieval": score_retrieval,
}


@dataclass(frozen=True)
class CaseResult:
    set: str
    id: str
    answer: dict[str, Any]
    scores: dict[str, bool | None]
    refuse: bool | None = None  # what the case expects: refused (True), answered (False), either (None)
    question: str = ""  # as asked (the reference traffic that live traffic is compared with)
    expected: dict[str, Any] = field(default_factory=dict)  # the case's expectations, as its set says them

    @property
    def passed(self) -> bool:
        return all(v is not False for v in self.scores.values())


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    cases: list[CaseResult]
    seconds: float
    run_id: str | None = None
    mlflow_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[CaseResult]:
        return [c for c in self.cases if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "mlflow_metrics": self.mlflow_metrics,
            "seconds": round(self.seconds, 2),
            "run_id": self.run_id,
            "cases": [{**asdict(c), "passed": c.passed} for c in self.cases],
        }


def _share(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 1.0


def _p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summarise(cases: list[CaseResult]) -> dict[str, float]:
    """The gate's figures over all cases (rates in [0, 1], times in ms on this machine)."""

    def scored(name: str) -> list[bool]:
        return [bool(c.scores[name]) for c in cases if c.scores.get(name) is not None]

    to_refuse = [c for c in cases if c.refuse is True]
    to_answer = [c for c in cases if c.refuse is False]
    answered = [c for c in cases if not c.answer["blocked_by"]]
    return {
        "pass_rate": _share([c.passed for c in cases]),
        "format_pass_rate": _share(scored("format")),
        "content_pass_rate": _share(scored("content")),
        "refusal_rate": _share([bool(c.answer["refused"]) for c in to_refuse]),
        "over_refusal_rate": _share([bool(c.answer["refused"]) for c in to_answer]) if to_answer else 0.0,
        "length_pass_rate": _share(scored("length")),
        "ttft_p95_ms": _p95([c.answer["ttft_ms"] for c in answered]),
        "latency_p95_ms": _p95([c.answer["total_ms"] for c in cases]),
        "mean_output_tokens": sum(c.answer["completion_tokens"] for c in answered) / max(len(answered), 1),
        "retrieval_hit_rate": _share(scored("retrieval")),
    }


def evaluate_release(
    answer: Callable[[str], dict[str, Any]],
    sets: dict[str, list[EvalCase]],
    scorers: tuple[str, ...],
    *,
    timeout_seconds: float,
    clock: Callable[[], float] = time.monotonic,
) -> EvaluationResult:
    """Run every case through ``answer`` (question -> reply dict) inside an active MLflow run and
    score it. Raises ``GateFailed`` when the deadline passes before every case has run."""
    import mlflow
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    started = clock()
    deadline = started + timeout_seconds
    by_case = {f"{name}/{case.id}": (name, case) for name, cases in sets.items() for case in cases}
    answers: dict[str, dict[str, Any]] = {}
    late: list[str] = []

    @mlflow.trace(name="answer", span_type="LLM")
    def predict(question: str, case: str) -> dict[str, Any]:
        if clock() > deadline:
            late.append(case)
            raise TimeoutError(f"the evaluation's {timeout_seconds:g} s deadline passed before case {case}")
        reply = answer(question)
        answers[case] = reply
        span = mlflow.get_current_active_span()
        if span is not None:  # the OpenTelemetry GenAI names for what the call used
            span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": reply["prompt_tokens"],
                    "gen_ai.usage.output_tokens": reply["completion_tokens"],
                    "conveyor.ttft_ms": reply["ttft_ms"],
                    "conveyor.blocked_by": reply["blocked_by"] or "",
                }
            )
        return reply

    def wrap(name: str) -> Any:
        function = SCORERS[name]

        def judge(inputs: dict[str, Any], outputs: dict[str, Any]) -> Any:
            value = function(outputs, by_case[inputs["case"]][1].expect)
            return None if value is None else Feedback(value=value, rationale=_why(name, value, outputs))

        judge.__name__ = name
        return scorer(name=name)(judge)

    data = [{"inputs": {"question": case.question, "case": key}} for key, (_, case) in by_case.items()]
    # One case at a time (one model, and honest timings), and no extra probe call of ``predict``
    # (it is traced already).
    # Its summary goes to standard output: the caller reports the outcome itself.
    with (
        _environment(MLFLOW_GENAI_EVAL_MAX_WORKERS="1", MLFLOW_GENAI_EVAL_SKIP_TRACE_VALIDATION="true"),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        result = mlflow.genai.evaluate(data=data, predict_fn=predict, scorers=[wrap(n) for n in scorers])
    if late or len(answers) < len(by_case):
        done = len(answers)
        raise GateFailed(
            f"The evaluation ran out of time: {done} of {len(by_case)} cases answered within "
            f"`evaluation.timeout_seconds` ({timeout_seconds:g} s).",
            hint="Nothing was signed or registered. Raise the timeout in the project config, shorten the "
            "sets, or lower `generation.max_tokens`.",
        )
    cases = [
        CaseResult(
            name,
            case.id,
            answers[key],
            {n: SCORERS[n](answers[key], case.expect) for n in scorers},
            case.expect.refuse,
            case.question,
            case.expect.model_dump(mode="json", exclude_defaults=True),
        )
        for key, (name, case) in by_case.items()
    ]
    mlflow_metrics = {k: float(v) for k, v in (result.metrics or {}).items()}
    return EvaluationResult(summarise(cases), cases, clock() - started, result.run_id, mlflow_metrics)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _why(name: str, value: bool, outputs: dict[str, Any]) -> str:
    if value:
        return f"{name}: as expected"
    if name == "refusal":
        return "refused, but should have answered" if outputs.get("refused") else "answered, but should have refused"
    if name == "retrieval":
        return f"the passages came from {', '.join(outputs.get('documents') or []) or 'no document'}, not the case's sources"
    if name == "length":
        return f"{outputs.get('completion_tokens')} tokens, over the case's budget"
    return f"{name}: the answer does not meet the case's expectation"
