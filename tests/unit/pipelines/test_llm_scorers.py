"""The offline scorers and the gate's figures: pure functions of answers and expectations."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.pipelines.llm.evaluate import (
    CaseResult,
    score_content,
    score_format,
    score_length,
    score_refusal,
    summarise,
)
from conveyor.policies.errors import PolicyInvalid
from conveyor.policies.llm import Expectations
from conveyor.policies.loading import load_policy
from conveyor.policies.promotion import Candidate, LlmGate, PromotionPolicy, decide_promotion


def _answer(text: str, **more: Any) -> dict[str, Any]:
    return {
        "text": text,
        "refused": False,
        "completion_tokens": 10,
        "ttft_ms": 100.0,
        "total_ms": 500.0,
        "blocked_by": None,
        **more,
    }


def test_format_checks_regex_and_json_schema() -> None:
    schema = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
    assert score_format(_answer("Yes."), Expectations(regex=r"^\W*(yes|no)\b")) is True
    assert score_format(_answer("Maybe."), Expectations(regex=r"^\W*(yes|no)\b")) is False
    assert score_format(_answer('{"status": "ok"}'), Expectations(json_schema=schema)) is True
    assert score_format(_answer('{"status": "bad"}'), Expectations(json_schema=schema)) is False
    assert score_format(_answer("not json"), Expectations(json_schema=schema)) is False
    assert score_format(_answer("anything"), Expectations()) is None


def test_content_refusal_and_length() -> None:
    assert score_content(_answer("Hello from Conveyor"), Expectations(contains=("conveyor",))) is True
    assert score_content(_answer("the password is x"), Expectations(not_contains=("password",))) is False
    assert score_refusal(_answer("no", refused=True), Expectations(refuse=True)) is True
    assert score_refusal(_answer("yes"), Expectations(refuse=True)) is False
    assert score_refusal(_answer("yes"), Expectations()) is None
    assert score_length(_answer("x", completion_tokens=65), Expectations(max_tokens=64)) is False


def _case(id: str, passed: bool, refuse: bool | None, **answer: Any) -> CaseResult:
    return CaseResult("set", id, _answer("x", **answer), {"format": passed}, refuse)


def test_summarise_separates_refusals_from_over_refusals() -> None:
    cases = [
        _case("a", True, False),
        _case("b", True, False, refused=True, blocked_by="input.secrets.credentials"),
        _case("c", True, True, refused=True, blocked_by="input.injection.x"),
        _case("d", False, True),
    ]
    figures = summarise(cases)
    assert figures["refusal_rate"] == 0.5  # one of the two red-team cases refused
    assert figures["over_refusal_rate"] == 0.5  # one of the two ordinary ones refused
    assert figures["pass_rate"] == 0.75
    assert figures["format_pass_rate"] == 0.75
    assert figures["ttft_p95_ms"] == 100.0  # blocked requests have no first token to time


def test_the_llm_gate_is_judged_by_the_same_decision_as_models() -> None:
    gate = LlmGate.model_validate(
        {
            "thresholds": {"refusal_rate": {"min": 1.0}, "ttft_p95_ms": {"max": 500}},
            "beat_champion": {"metric": "pass_rate"},
        }
    )
    policy = gate.as_policy(("canary", "champion"))
    candidate = Candidate(
        "a", "2", True, True, None, 1, {"refusal_rate": 0.9, "ttft_p95_ms": 400, "pass_rate": 0.9}, {"pass_rate": 0.95}
    )
    decision = decide_promotion(candidate, "1", policy)
    assert not decision.ok
    assert "refusal_rate 0.9000 is below the minimum 1" in decision.reasons
    assert any("does not beat champion v1" in r for r in decision.reasons)


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"scorers": ["format", "toxicity"]}, "unknown scorer(s) 'toxicity'"),
        ({"thresholds": {"accuracy": {"min": 1}}}, "unknown metric(s) 'accuracy'"),
        ({"beat_champion": {"metric": "bleu"}}, "`beat_champion.metric` 'bleu'"),
    ],
)
def test_a_gate_naming_what_does_not_exist_is_refused(tmp_path: Any, section: dict[str, Any], named: str) -> None:
    path = tmp_path / "promotion.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"llm": section}))
    with pytest.raises(PolicyInvalid) as refused:
        load_policy(path, PromotionPolicy)
    assert named in refused.value.message


def test_the_policy_s_own_requirements_hold_for_releases_too() -> None:
    from conveyor.policies.promotion import Requirements

    gate = LlmGate.model_validate({"thresholds": {"pass_rate": {"min": 0.5}}})
    policy = gate.as_policy(("canary",), Requirements(clean_tree=True))
    candidate = Candidate("a", "1", True, True, False, 1, {"pass_rate": 0.9})
    decision = decide_promotion(candidate, None, policy)
    assert not decision.ok
    assert any("clean, committed work tree" in r for r in decision.reasons)
