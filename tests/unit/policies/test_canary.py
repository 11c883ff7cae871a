"""judge_canary: hold until a step has its requests and time, roll back on any broken limit."""

from __future__ import annotations

import numpy as np
import pytest

from conveyor.policies.canary import CanaryPolicy, CanaryStats, Side, judge_canary, psi
from conveyor.policies.errors import PolicyInvalid
from conveyor.policies.loading import load_policy
from tests.conftest import REPO

POLICY = CanaryPolicy(steps=(10, 50, 100), min_requests=100, min_seconds=10, max_error_rate=0.02, breach_limit=3)
rng = np.random.default_rng(0)
FAST = list(rng.gamma(9, 2.2, 500))  # about 20 ms, right-skewed as latencies are
SCORES = list(rng.beta(2, 8, 500))


def stats(
    *,
    step: int = 0,
    seconds: float = 60,
    requests: int = 300,
    errors: int = 0,
    breaches: int = 0,
    latencies: list[float] = FAST,
    champion_latencies: list[float] | None = None,
    predictions: list[float] = SCORES,
    in_a_row: int = 0,
) -> CanaryStats:
    champion = Side(
        requests=3000,
        errors=0,
        latencies_ms=champion_latencies if champion_latencies is not None else list(rng.gamma(9, 2.2, 500)),
        predictions=list(rng.beta(2, 8, 500)),
    )
    return CanaryStats(step, seconds, Side(requests, errors, latencies, predictions, breaches), champion, in_a_row)


def test_a_healthy_canary_advances_and_the_last_step_is_final() -> None:
    verdict = judge_canary(stats(), POLICY)
    assert verdict.action == "advance" and not verdict.final, verdict
    assert judge_canary(stats(step=2), POLICY).final


def test_holds_until_the_step_has_its_requests_and_time() -> None:
    verdict = judge_canary(stats(requests=40), POLICY)
    assert verdict.action == "hold" and "40 of 100 canary requests" in verdict.reasons[0]
    assert judge_canary(stats(seconds=3), POLICY).action == "hold"


def test_errors_roll_back_as_soon_as_the_limit_cannot_be_met() -> None:
    # 2% of the 100 requests a step needs is 2 errors: a third fails the step whatever follows
    assert judge_canary(stats(requests=30, errors=2), POLICY).action == "hold"
    verdict = judge_canary(stats(requests=30, errors=3), POLICY)
    assert verdict.action == "rollback" and "canary errors 3 of 30" in verdict.reasons[0] and not verdict.breached
    assert judge_canary(stats(requests=1000, errors=30), POLICY).action == "rollback"


def test_one_contract_breach_rolls_back_at_once() -> None:
    verdict = judge_canary(stats(requests=5, errors=1, breaches=1), POLICY)
    assert verdict.action == "rollback" and "broke the output contract" in verdict.reasons[0]


def test_a_slow_canary_is_rolled_back_only_after_the_breach_persists() -> None:
    slow = [x * 3 for x in FAST]
    first = judge_canary(stats(latencies=slow), POLICY)
    assert first.action == "hold" and first.breached and "breach 1 of 3" in first.reasons[-1]
    assert "latency regressed" in first.reasons[0] and "slower in 99% of pairs" in first.reasons[0]
    assert judge_canary(stats(latencies=slow, in_a_row=1), POLICY).action == "hold"
    last = judge_canary(stats(latencies=slow, in_a_row=2), POLICY)
    assert last.action == "rollback" and "3 analyses in a row" in last.reasons[-1]


def test_noise_does_not_fail_latency() -> None:
    """The same latency distribution, or one a few ms slower (under slack), never breaches."""
    for canary in (list(rng.gamma(9, 2.2, 300)), [x + 3 for x in rng.gamma(9, 0.3, 300)]):
        champion = list(rng.gamma(9, 0.3, 300)) if max(canary) < 30 else None
        verdict = judge_canary(stats(latencies=canary, champion_latencies=champion), POLICY)
        assert verdict.action == "advance" and not verdict.breached, verdict.reasons


def test_a_tail_that_looks_slow_but_is_not_significant_is_inconclusive() -> None:
    """Ten samples a side, the median 1.5 times slower: not enough to decide, so the step holds."""
    rule = POLICY.latency.model_copy(update={"min_samples": 10})
    policy = POLICY.model_copy(update={"latency": rule})
    canary = [44.0, 45, 20, 50, 19, 42, 22, 18, 20, 44]
    champion = [20.0, 22, 21, 19, 20, 18, 23, 40, 20, 21]
    verdict = judge_canary(stats(latencies=canary, champion_latencies=champion), policy)
    assert verdict.action == "hold" and verdict.inconclusive and "latency inconclusive" in verdict.reasons[0]


def test_skewed_predictions_are_a_breach() -> None:
    verdict = judge_canary(stats(predictions=list(rng.beta(8, 2, 500)), in_a_row=2), POLICY)
    assert verdict.action == "rollback" and "prediction PSI" in verdict.reasons[0]


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    same = rng.normal(0, 1, 5000)
    assert psi(same, rng.normal(0, 1, 5000)) < 0.02
    assert psi(same, rng.normal(1.5, 1, 5000)) > 0.5
    assert psi([0.5] * 10, [0.5] * 10) == 0.0


def test_the_repositorys_canary_policy_loads_and_bad_steps_are_refused(tmp_path) -> None:
    assert load_policy(REPO / "policies" / "canary.yaml", CanaryPolicy).steps[-1] == 100
    path = tmp_path / "canary.yaml"
    path.write_text("steps: [50, 10]\n")
    with pytest.raises(PolicyInvalid, match="steps must be increasing"):
        load_policy(path, CanaryPolicy)
