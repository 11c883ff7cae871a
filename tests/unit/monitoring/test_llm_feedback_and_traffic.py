"""Feedback rows, candidate cases and their review; retrieval and the traffic comparison on frames."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conveyor.monitoring.feedback import accept_candidates, candidates_of, join_feedback, read_feedback
from conveyor.policies.errors import DataInvalid


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("rows", "named"),
    [
        ([{"request_id": "a", "rating": "meh"}], "rating"),
        ([{"rating": "up"}], "request_id"),
        ([{"request_id": "a b", "rating": "up"}], "request_id"),
        ([{"request_id": "a", "rating": "up", "score": 3}], "score"),
        ([{"request_id": "a", "rating": "up", "correction": "x" * 5000}], "correction"),
    ],
)
def test_malformed_feedback_is_refused_naming_the_line_and_field(tmp_path: Path, rows: list, named: str) -> None:
    with pytest.raises(DataInvalid, match=rf"line 1: `{named}`"):
        read_feedback(_write(tmp_path / "f.jsonl", rows))


def test_feedback_reads_csv_and_refuses_a_file_without_its_columns(tmp_path: Path) -> None:
    good = tmp_path / "f.csv"
    good.write_text("request_id,rating,correction\nr1,down,Use the rollback command.\nr2,up,\n")
    rows = read_feedback(good)
    assert [(r.request_id, r.rating, r.correction) for r in rows] == [
        ("r1", "down", "Use the rollback command."),
        ("r2", "up", None),
    ]
    bad = tmp_path / "g.csv"
    bad.write_text("id,score\nr1,1\n")
    with pytest.raises(DataInvalid, match="no column rating, request_id"):
        read_feedback(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataInvalid, match="holds no feedback"):
        read_feedback(tmp_path / "empty.jsonl")


def _log() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "request_id": "r1",
                "version": "2",
                "served_by": "champion",
                "key": "alice",
                "question": "How do I roll back?",
                "answer": "Ask someone.",
            },
            {
                "request_id": "r2",
                "version": "2",
                "served_by": "champion",
                "key": "bob",
                "question": "What is a canary?",
                "answer": "A bird.",
            },
        ]
    )


def test_feedback_joins_only_answers_given_to_the_key_that_posted_it(tmp_path: Path) -> None:
    rows = read_feedback(
        _write(
            tmp_path / "f.jsonl",
            [
                {"request_id": "r1", "rating": "down", "key": "alice", "correction": "Run conveyor rollback MODEL."},
                {"request_id": "r2", "rating": "down", "key": "mallory"},  # not mallory's answer
                {"request_id": "r3", "rating": "down"},  # no such answer
            ],
        )
    )
    joined = join_feedback(rows, _log())
    assert joined["version"].notna().tolist() == [True, False, False]
    (candidate,) = candidates_of(joined[joined["version"].notna()], set())
    assert candidate["question"] == "How do I roll back?" and candidate["review"]["status"] == "pending"
    assert set(candidate["expect"]["contains"]) <= {"conveyor", "rollback", "MODEL", "Run"}
    assert candidates_of(joined[joined["version"].notna()], {candidate["id"]}) == [], "a candidate is written once"


def test_only_accepted_candidates_count_and_a_bad_edit_is_named(tmp_path: Path) -> None:
    base = {"question": "How do I roll back?", "expect": {"refuse": False}}
    path = _write(
        tmp_path / "c.jsonl",
        [
            {"id": "a", **base, "review": {"status": "accepted"}},
            {"id": "b", **base, "review": {"status": "rejected"}},
            {"id": "c", **base, "review": {"status": "pending"}},
        ],
    )
    accepted, rejected, pending = accept_candidates(path)
    assert [c.id for c in accepted] == ["a"] and (rejected, pending) == (1, 1)
    _write(path, [{"id": "a", "question": "q", "expect": {"regex": "("}, "review": {"status": "accepted"}}])
    with pytest.raises(DataInvalid, match="line 1"):
        accept_candidates(path)


def test_the_traffic_comparison_tells_a_rise_in_out_of_knowledge_questions_from_noise(tmp_path: Path) -> None:
    from conveyor.monitoring.llm_traffic import compare_traffic, live_frame
    from conveyor.policies.drift import LlmMonitoring

    def rows(n: int, outside: int, seed: int) -> pd.DataFrame:
        import random

        pick = random.Random(seed)
        log = [
            {
                "question": "What is a canary release?" + " please" * pick.randint(0, 3),
                "answer": "A gradual release." + " Really." * pick.randint(0, 3),
                "completion_tokens": pick.randint(5, 15),
                "retrieval_score": 0.1 if i < outside else pick.uniform(1.0, 3.0),
                "refused": False,
                "status": "ok",
            }
            for i in range(n)
        ]
        return live_frame(pd.DataFrame(log), 0.8)

    policy = LlmMonitoring()
    reference = rows(40, 4, seed=1)
    _, _, calm, _, _, _ = compare_traffic(reference, rows(40, 5, seed=2), policy, tmp_path, "calm")
    assert not any(r.breached for r in calm)
    _, _, risen, _, html, _ = compare_traffic(reference, rows(40, 30, seed=3), policy, tmp_path, "risen")
    (outside,) = [r for r in risen if r.name == "out_of_knowledge"]
    assert outside.breached and outside.live == 0.75 and outside.p_value < 0.01
    assert html.is_file()
    _, _, _, verdict, _, _ = compare_traffic(reference, rows(40, 4, seed=4), policy, tmp_path, "rated", feedback=(4, 3))
    assert verdict["breached"] and verdict["negative_share"] == 0.75


def test_a_candidate_case_keeps_the_whole_response_id(tmp_path: Path) -> None:
    request_id = "chatcmpl-" + "a1b2c3d4" * 4  # as the gateway makes them: 41 characters
    log = _log().assign(request_id=[request_id, "r2"])
    rows = read_feedback(_write(tmp_path / "f.jsonl", [{"request_id": request_id, "rating": "down", "key": "alice"}]))
    (candidate,) = candidates_of(join_feedback(rows, log), set())
    assert candidate["id"] == f"feedback-{request_id}"
