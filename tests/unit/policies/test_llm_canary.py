"""The LLM canary's judgement: faults at once, the rest only when the evidence is significant and lasts."""

from __future__ import annotations

import random

from conveyor.policies.canary import LlmCanaryPolicy, LlmSide, LlmStats, judge_llm_canary

POLICY = LlmCanaryPolicy(min_requests=30, min_seconds=10)


def _side(
    n: int,
    *,
    rng: random.Random,
    ttft: float = 200,
    tpot: float = 11,
    refused: float = 0.05,
    errors: int = 0,
    breaches: int = 0,
) -> LlmSide:
    return LlmSide(
        requests=n,
        errors=errors,
        breaches=breaches,
        ttft_ms=[rng.gauss(ttft, ttft * 0.2) for _ in range(n)],
        tpot_ms=[rng.gauss(tpot, tpot * 0.1) for _ in range(n)],
        refused=sum(rng.random() < refused for _ in range(n)),
        scored=n,
        score_failures=sum(rng.random() < 0.3 for _ in range(n)),
    )


def _stats(canary: LlmSide, champion: LlmSide, *, step: int = 0, seconds: float = 60, in_a_row: int = 0) -> LlmStats:
    return LlmStats(step, seconds, canary, champion, in_a_row)


def test_an_empty_or_malformed_answer_rolls_back_at_once() -> None:
    rng = random.Random(1)
    verdict = judge_llm_canary(_stats(_side(3, rng=rng, breaches=1), _side(30, rng=rng), seconds=1), POLICY)
    assert verdict.action == "rollback" and "empty or malformed" in verdict.reasons[0]


def test_errors_past_the_rate_roll_back_before_the_step_is_complete() -> None:
    rng = random.Random(2)
    verdict = judge_llm_canary(_stats(_side(10, rng=rng, errors=2), _side(30, rng=rng), seconds=1), POLICY)
    assert verdict.action == "rollback" and "errors 2 of 10" in verdict.reasons[0]


def test_a_step_holds_until_it_has_its_requests_and_time() -> None:
    rng = random.Random(3)
    verdict = judge_llm_canary(_stats(_side(10, rng=rng), _side(30, rng=rng), seconds=5), POLICY)
    assert verdict.action == "hold" and "10 of 30 canary requests" in verdict.reasons[0]


def test_a_canary_like_its_champion_advances_and_the_last_step_is_final() -> None:
    rng = random.Random(4)
    verdict = judge_llm_canary(_stats(_side(60, rng=rng), _side(60, rng=rng), step=2), POLICY)
    assert verdict.action == "advance" and verdict.final


def test_a_rise_in_refusals_is_a_breach_that_rolls_back_only_when_it_lasts() -> None:
    rng = random.Random(5)
    canary, champion = _side(60, rng=rng, refused=0.6), _side(60, rng=rng)
    first = judge_llm_canary(_stats(canary, champion), POLICY)
    assert first.action == "hold" and first.breached and "refusals rose" in first.reasons[0]
    last = judge_llm_canary(_stats(canary, champion, in_a_row=POLICY.breach_limit - 1), POLICY)
    assert last.action == "rollback"


def test_a_slower_first_token_is_a_breach_and_a_little_noise_is_not() -> None:
    rng = random.Random(6)
    slow = judge_llm_canary(_stats(_side(60, rng=rng, ttft=600), _side(60, rng=rng)), POLICY)
    assert slow.breached and "time to first token: latency regressed" in slow.reasons[0]
    close = judge_llm_canary(_stats(_side(60, rng=rng, ttft=215), _side(60, rng=rng)), POLICY)
    assert close.action == "advance"


def test_a_small_rise_in_refusals_on_few_answers_is_inconclusive_not_a_breach() -> None:
    champion = LlmSide(30, 0, 0, [200.0] * 30, [11.0] * 30, refused=1)
    canary = LlmSide(30, 0, 0, [200.0] * 30, [11.0] * 30, refused=5)  # 17% vs 3%: large, not yet significant
    verdict = judge_llm_canary(_stats(canary, champion), POLICY)
    assert verdict.action == "hold" and verdict.inconclusive and not verdict.breached


def test_healthy_canaries_are_rarely_held_as_breached() -> None:
    rng = random.Random(7)
    breached = sum(
        judge_llm_canary(_stats(_side(40, rng=rng), _side(40, rng=rng)), POLICY).breached for _ in range(300)
    )
    assert breached / 300 < 0.03  # and a rollback needs three in a row: about 0.03**3
