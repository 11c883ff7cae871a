"""Feedback on LLM answers: rows read and checked, joined to the logged answers, bad answers made
candidate evaluation cases for a person to review.

A row names the request it rates (the ``id`` of the response), ``up`` or ``down``, and optionally
a label, a corrected answer and a comment; a file is JSONL or CSV. Rows posted to the gateway
(``POST /v1/feedback``) carry the key that posted them, and join only an answer that key was
given: a client rates its own answers, not another team's. A candidate is an ``EvalCase`` line
with a ``review`` object beside it; ``accept_candidates`` drops the rejected ones and the reviews
and returns the cases that will count.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from conveyor.policies.errors import DataInvalid
from conveyor.policies.llm import EvalCase
from conveyor.registry.inference_log import FeedbackRow

__all__ = ["FeedbackRow", "accept_candidates", "candidates_of", "join_feedback", "read_feedback"]

_LIMIT = 100_000  # rows in one file


def read_feedback(path: Path) -> list[FeedbackRow]:
    """The rows of a JSONL or CSV file; any malformed row is a ``DataInvalid`` naming its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataInvalid(f"No feedback file at {path}.", hint="Give the path of a JSONL or CSV file.") from None
    except UnicodeDecodeError as exc:
        raise DataInvalid(f"{path} is not UTF-8 text ({exc}).", hint="Save the feedback as UTF-8.") from None
    records: list[tuple[int, Any]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = {"request_id", "rating"} - set(reader.fieldnames or ())
        if missing:
            raise DataInvalid(
                f"{path} has no column {', '.join(sorted(missing))}.",
                hint="The columns are request_id, rating (up or down), and optionally label, correction, comment.",
            )
        records = [(n, {k: v for k, v in row.items() if v not in (None, "")}) for n, row in enumerate(reader, start=2)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except ValueError as exc:
                    raise DataInvalid(
                        f"{path} line {number} is not JSON ({exc}).",
                        hint='Each line is one object: {"request_id": "…", "rating": "down", "correction": "…"}.',
                    ) from None
    if len(records) > _LIMIT:
        raise DataInvalid(f"{path} holds {len(records):,} rows, more than {_LIMIT:,}.", hint="Split the file.")
    rows, problems = [], []
    for number, record in records:
        try:
            rows.append(FeedbackRow.model_validate(record))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "(the row)"
            problems.append(f"line {number}: `{where}`: {first['msg']}")
            if len(problems) >= 5:
                break
    if problems:
        raise DataInvalid(
            f"{path} has malformed feedback: {'; '.join(problems)}.",
            hint="request_id is a response's id, rating is up or down. Nothing was recorded.",
        )
    if not rows:
        raise DataInvalid(f"{path} holds no feedback.", hint="Add at least one row.")
    return rows


def join_feedback(rows: list[FeedbackRow], log: pd.DataFrame) -> pd.DataFrame:
    """Each row beside the answer it rates (the log's LLM rows); unmatched rows have no ``version``.
    A row that carries a key joins only an answer given to that key."""
    frame = pd.DataFrame([r.model_dump() for r in rows])
    wanted = ["request_id", "version", "served_by", "key", "question", "answer", "passages", "time"]
    answers = log[[c for c in wanted if c in log.columns]] if not log.empty else pd.DataFrame(columns=wanted)
    answers = answers.drop_duplicates("request_id").rename(columns={"key": "answered_key"})
    joined = frame.merge(answers, on="request_id", how="left")
    if "answered_key" in joined:
        foreign = joined["key"].notna() & (joined["key"] != joined["answered_key"])
        joined.loc[foreign, ["version", "question", "answer"]] = None
    return joined


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z'-]{3,}", text)


def candidates_of(joined: pd.DataFrame, existing: set[str]) -> list[dict[str, Any]]:
    """A candidate case for each badly rated answer that has its question logged (not already a candidate).

    The expectation proposed is the least a bad answer says about the case: it must be answered,
    and with a correction, contain up to two of the correction's words the bad answer lacked. A
    person edits it before it counts."""
    out = []
    for row in joined.itertuples():
        question = getattr(row, "question", None)
        if row.rating != "down" or not isinstance(question, str) or not question.strip():
            continue
        case_id = "feedback-" + re.sub(r"[^A-Za-z0-9_.-]", "-", str(row.request_id))[-90:]  # whole, within 100
        if case_id in existing:
            continue
        answer = row.answer if isinstance(row.answer, str) else ""
        expect: dict[str, Any] = {"refuse": False}
        if isinstance(row.correction, str) and row.correction:
            had = {w.lower() for w in _words(answer)}
            new = sorted({w for w in _words(row.correction) if w.lower() not in had}, key=len, reverse=True)[:2]
            if new:
                expect["contains"] = new
        out.append(
            {
                "id": case_id,
                "question": question,
                "expect": expect,
                "tags": ["feedback", *([row.label] if isinstance(row.label, str) and row.label else [])],
                "review": {
                    "status": "pending",  # set to accepted or rejected; accepted lines count once accepted
                    "request_id": row.request_id,
                    "version": row.version,
                    "answer": answer,
                    "correction": row.correction if isinstance(row.correction, str) else None,
                    "comment": row.comment if isinstance(row.comment, str) else None,
                },
            }
        )
        existing.add(case_id)
    return out


def accept_candidates(path: Path) -> tuple[list[EvalCase], int, int]:
    """The reviewed file's accepted cases (``review.status: accepted``), checked as evaluation
    cases; also how many were rejected and how many are still pending. ``DataInvalid`` names a bad line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataInvalid(
            f"No candidates file at {path}.", hint="`conveyor feedback add FILE` writes one; give its path."
        ) from None
    accepted, rejected, pending, problems = [], 0, 0, []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            review = record.pop("review", None) or {}
            status = review.get("status", "pending") if isinstance(review, dict) else "pending"
            if status == "rejected":
                rejected += 1
                continue
            if status != "accepted":
                pending += 1
                continue
            accepted.append(EvalCase.model_validate(record))
        except (ValueError, AttributeError) as exc:
            message = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            problems.append(f"line {number}: {message}")
    if problems:
        raise DataInvalid(
            f"{path} has lines that are not evaluation cases: {'; '.join(problems[:5])}.",
            hint="Each line is a case (id, question, expect) with its review; fix the lines named. Nothing was accepted.",
        )
    return accepted, rejected, pending
