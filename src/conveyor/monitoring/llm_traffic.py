"""Live LLM traffic against the release's own evaluation traffic: text descriptors, rates, feedback.

The reference is what the champion answered in its evaluation (every case's question and answer,
from the report its ``release.evaluated`` event names); the window is what it answered live,
from the inference log. Both get the same descriptors, computed offline: Evidently's
``TextLength`` and ``IsValidJSON`` on the texts, and ours from the logged fields (tokens per answer,
the best passage's retrieval score, whether the question fell outside the knowledge base, refused,
blocked). Evidently's drift preset compares the descriptors' distributions (``policies/drift.yaml``
``llm.drift``); each rate is compared by a one-sided Fisher exact test with a least increase
(``llm.rates``); negative feedback by its share of the ratings. Drift is a breach of kind
"drift", a rate or feedback breach one of kind "quality"; fewer rows than ``min_rows``: no verdict.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from conveyor.monitoring.drift import ColumnDrift, WindowCheck, caused, column_drifts, statistic
from conveyor.policies.drift import LlmMonitoring
from conveyor.registry.pages import Heading, inject_heading, publish, self_contained, table, write_index

__all__ = [
    "ColumnDrift",
    "LlmTrafficResult",
    "RateCheck",
    "compare_traffic",
    "finish_llm_page",
    "live_frame",
    "llm_heading",
    "reference_frame",
]

Status = Literal["ok", "drift", "quality", "insufficient"]


def _frame(rows: list[dict[str, Any]], min_score: float | None) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows,
        columns=["question", "answer", "completion_tokens", "ttft_ms", "retrieval_score", "refused", "blocked"],
    )
    frame["question"] = frame["question"].fillna("").astype(str)
    frame["answer"] = frame["answer"].fillna("").astype(str)
    for column in ("completion_tokens", "ttft_ms", "retrieval_score"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["refused"] = frame["refused"].fillna(False).astype(bool)
    frame["blocked"] = frame["blocked"].fillna(False).astype(bool)
    if min_score is None:
        frame["out_of_knowledge"] = False
    else:
        frame["out_of_knowledge"] = ~frame["blocked"] & (frame["retrieval_score"].fillna(0.0) < min_score)
    return frame


def reference_frame(report: dict[str, Any], min_score: float | None) -> pd.DataFrame:
    """The evaluation's traffic (one row per case) from its report."""
    rows = [
        {
            "question": case.get("question", ""),
            "answer": case["answer"]["text"],
            "completion_tokens": case["answer"]["completion_tokens"],
            "ttft_ms": case["answer"]["ttft_ms"],
            "retrieval_score": case["answer"].get("retrieval_score"),
            "refused": case["answer"]["refused"],
            "blocked": bool(case["answer"]["blocked_by"]),
        }
        for case in report["cases"]
    ]
    return _frame(rows, min_score)


def live_frame(log: pd.DataFrame, min_score: float | None) -> pd.DataFrame:
    """The window's answers (rows of the LLM inference log) in the same shape."""
    if log.empty:
        return _frame([], min_score)
    rows = [
        {
            "question": r.get("question"),
            "answer": r.get("answer"),
            "completion_tokens": r.get("completion_tokens"),
            "ttft_ms": r.get("ttft_ms"),
            "retrieval_score": r.get("retrieval_score"),
            "refused": r.get("refused"),
            "blocked": r.get("status") == "blocked" or isinstance(r.get("blocked_by"), str),
        }
        for r in log.to_dict("records")
    ]
    return _frame(rows, min_score)


@dataclass(frozen=True)
class RateCheck:
    name: str
    reference: float
    live: float
    increase: float  # the least increase that is a breach
    p_value: float
    breached: bool


@dataclass
class LlmTrafficResult(WindowCheck):
    status: Status
    share: float | None = None
    columns: list[ColumnDrift] = field(default_factory=list)
    rates: list[RateCheck] = field(default_factory=list)
    feedback: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    report: Path | None = None
    html: Path | None = None
    snapshot: Path | None = None
    report_digest: str | None = None
    trigger: str | None = None

    @property
    def drifted(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def describe(self) -> str:
        if self.status == "insufficient":
            return self.reasons[0] if self.reasons else "not enough traffic for a verdict"
        if self.status == "ok":
            return "no drift and no quality breach"
        return "; ".join(self.reasons)

    @property
    def exit_code(self) -> int:
        return {"ok": 0, "drift": 1, "quality": 1, "insufficient": 3}[self.status]

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        for key in ("report", "html", "snapshot"):
            body[key] = str(body[key]) if body[key] else None
        body["drifted"] = self.drifted
        return body


_TEXT_DESCRIPTORS = ("question_length", "answer_length", "answer_json")


def _described(frame: pd.DataFrame) -> pd.DataFrame:
    """Evidently's offline text descriptors added to ``frame`` (lengths, JSON validity)."""
    from evidently import DataDefinition, Dataset
    from evidently.descriptors import IsValidJSON, TextLength

    definition = DataDefinition(text_columns=["question", "answer"])
    dataset = Dataset.from_pandas(
        frame[["question", "answer"]].reset_index(drop=True),
        data_definition=definition,
        descriptors=[
            TextLength("question", alias="question_length"),
            TextLength("answer", alias="answer_length"),
            IsValidJSON("answer", alias="answer_json"),
        ],
    )
    described = dataset.as_dataframe()
    out = frame.reset_index(drop=True).copy()
    for column in _TEXT_DESCRIPTORS:
        out[column] = described[column].to_numpy()
    out["question_length"] = out["question_length"].astype("float64")
    out["answer_length"] = out["answer_length"].astype("float64")
    out["answer_json"] = out["answer_json"].fillna(False).astype(bool)
    return out


def compare_traffic(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    policy: LlmMonitoring,
    out: Path,
    label: str,
    *,
    feedback: tuple[int, int] = (0, 0),
) -> tuple[list[ColumnDrift], float, list[RateCheck], dict[str, Any], Path, Path]:
    """Descriptor drift (Evidently), rate increases (Fisher) and the feedback share; writes the
    HTML report and Evidently's JSON under ``out``. ``feedback`` is (ratings, negative ones)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    from scipy.stats import fisher_exact

    reference, current = _described(reference), _described(current)
    columns = [c for c in policy.drift.columns if reference[c].notna().any() and current[c].notna().any()]
    numeric = list(columns)  # the rates' columns are shown too; their verdict is the Fisher test below
    definition = DataDefinition(
        numerical_columns=numeric, categorical_columns=["out_of_knowledge", "refused", "blocked"]
    )
    shown = [*numeric, "out_of_knowledge", "refused", "blocked"]
    preset = DataDriftPreset(
        columns=shown,
        drift_share=policy.drift.share,
        num_method=policy.drift.method,
        num_threshold=policy.drift.threshold,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report([preset], include_tests=True).run(
            current_data=Dataset.from_pandas(current[shown], data_definition=definition),
            reference_data=Dataset.from_pandas(reference[shown], data_definition=definition),
        )
    result = snapshot.dict()
    drift = column_drifts(result, numeric)
    share = sum(c.drifted for c in drift) / len(drift) if drift else 0.0
    rates = []
    for name, increase in policy.rates.items():
        column = "answer_json" if name == "answer_json" else name
        live_hits, live_n = int(current[column].sum()), len(current)
        ref_hits, ref_n = int(reference[column].sum()), len(reference)
        live_rate, ref_rate = live_hits / max(live_n, 1), ref_hits / max(ref_n, 1)
        p = float(
            fisher_exact([[live_hits, live_n - live_hits], [ref_hits, ref_n - ref_hits]], alternative="greater").pvalue
        )
        breached = live_rate - ref_rate >= increase and p < policy.significance
        rates.append(RateCheck(name, round(ref_rate, 4), round(live_rate, 4), increase, round(p, 6), breached))
    ratings, negative = feedback
    negative_share = negative / ratings if ratings else None
    verdict = {
        "ratings": ratings,
        "negative": negative,
        "negative_share": None if negative_share is None else round(negative_share, 4),
        "max_negative_share": policy.feedback.max_negative_share,
        "breached": ratings >= policy.feedback.min_ratings
        and negative_share is not None
        and negative_share > policy.feedback.max_negative_share,
    }
    out.mkdir(parents=True, exist_ok=True)
    html = out / f"{label}.html"
    snapshot.save_html(str(html))
    kept = out / f"{label}.evidently.json"
    kept.write_text(json.dumps(result, default=str))
    return drift, share, rates, verdict, html, kept


def llm_heading(result: LlmTrafficResult) -> Heading:
    """What the LLM traffic page says first: model, version, window, verdict, reasons, the sizes of
    both samples, the feedback, and what the check caused."""
    verdict = {
        "ok": "ok: no drift and no quality breach",
        "drift": "drift",
        "quality": "quality breach",
        "insufficient": "not enough data",
    }[result.status]
    feedback = result.feedback or {}
    ratings, negative = int(feedback.get("ratings") or 0), int(feedback.get("negative") or 0)
    rated = (
        f"{negative} of {ratings} rated down ({negative / ratings:.0%}; the policy allows "
        f"{feedback.get('max_negative_share', 0):.0%})"
        if ratings
        else "no ratings"
    )
    breach = result.status in ("drift", "quality")
    return Heading(
        "LLM traffic",
        f"LLM traffic of {result.model} version {result.version}: {verdict.split(':')[0]} ({result.window})",
        verdict,
        "breach" if breach else ("ok" if result.status == "ok" else "inconclusive"),
        model=result.model,
        version=result.version,
        window=f"{result.window}: {result.since or '-'} to {result.until or '-'}",
        reasons=result.reasons or [result.describe()],
        samples=[
            ("reference", f"{result.reference_rows:,} answers of the release's evaluation"),
            ("live", f"{result.window_rows:,} answers served by the champion"),
            ("feedback", rated),
        ],
        caused=(
            "nothing: too little data for a verdict"
            if result.status == "insufficient"
            else caused(result.trigger, "a re-evaluation", breach=breach)
        ),
    )


def finish_llm_page(result: LlmTrafficResult, reports: Path, min_rows: int) -> None:
    """Head the check's page with its verdict (or write the verdict alone where nothing was compared)
    once the trigger has decided; then the index."""
    if result.html is None:
        return
    heading = llm_heading(result)
    if not result.html.exists():
        publish(result.html, self_contained(heading, ""), reports)
        return
    rows = [
        [
            c.column,
            "drifted" if c.drifted else "no drift",
            f"{c.method} {statistic(c.method)} {c.score:.4g} (threshold {c.threshold:g})",
        ]
        for c in sorted(result.columns, key=lambda c: (not c.drifted, c.column))
    ]
    rows += [
        [
            f"{r.name} rate",
            "breach" if r.breached else "ok",
            f"{r.live:.1%} live vs {r.reference:.1%} in evaluation; Fisher p={r.p_value:.3g}; "
            f"a breach is +{r.increase:.0%} and significant",
        ]
        for r in result.rates
    ]
    feedback = result.feedback or {}
    if feedback:
        rows.append(
            [
                "feedback",
                "breach" if feedback.get("breached") else "ok",
                f"{int(feedback.get('negative') or 0)} of {int(feedback.get('ratings') or 0)} rated down; "
                f"at most {float(feedback.get('max_negative_share') or 0):.0%} allowed",
            ]
        )
    shown = table(["check", "verdict", "measured"], rows)
    if result.window_rows < min_rows:  # Evidently compared them anyway: say its verdict is not Conveyor's
        shown += (
            "<p style='margin:0 16px 12px;font:13px system-ui,sans-serif;color:#7f1d1d'>"
            f"Only {result.window_rows} live answers (fewer than {min_rows}): the descriptor comparison below is "
            "shown for reference and is not part of the verdict.</p>"
        )
    inject_heading(result.html, heading, shown)
    write_index(reports)
