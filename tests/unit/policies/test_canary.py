"""judge_canary: hold until a step has its requests and time, roll back on any broken limit."""

from __future__ import annotations

import numpy as np
import pytest

from policies.canary import CanaryPolicy, CanaryStats, Side, judge_canary, psi
from policies.errors import PolicyInvalid
from policies.loading import load_policy
from tests.conftest import REPO

POLICY = CanaryPolicy(steps=(10, 50, 100), min_requests=100, min_seconds=10, max_error_rate=0.02, max_psi=0.2)
rng = np.random.default_rng(0)
FAST = list(rng.normal(20, 2, 500))
SCORES = list(rng.beta(2, 8, 500))


def stats(
    *,
    step: int = 0,
    seconds: float = 60,
    requests: int = 300,
    errors: int = 0,
    latencies: list[float] = FAST,
    predictions: list[float] = SCORES,
) -> CanaryStats:
    champion = Side(requests=3000, errors=0, latencies_ms=FAST, predictions=list(rng.beta(2, 8, 500)))
    return CanaryStats(step, seconds, Side(requests, errors, latencies, predictions), champion)


def test_a_healthy_canary_advances_and_the_last_step_is_final() -> None:
    verdict = judge_canary(stats(), POLICY)
    assert verdict.action == "advance" and not verdict.final
    assert judge_canary(stats(step=2), POLICY).final


def test_holds_until_the_step_has_its_requests_and_time() -> None:
    verdict = judge_canary(stats(requests=40), POLICY)
    assert verdict.action == "hold" and "40 of 100 canary requests" in verdict.reasons[0]
    assert judge_canary(stats(seconds=3), POLICY).action == "hold"


def test_errors_roll_back_as_soon_as_the_limit_cannot_be_met() -> None:
    # 2% of the 100 requests a step needs is 2 errors: a third fails the step whatever follows
    assert judge_canary(stats(requests=30, errors=2), POLICY).action == "hold"
    verdict = judge_canary(stats(requests=30, errors=3), POLICY)
    assert verdict.action == "rollback" and "canary errors 3 of 30" in verdict.reasons[0]
    assert judge_canary(stats(requests=1000, errors=30), POLICY).action == "rollback"


def test_a_slow_canary_is_rolled_back_with_the_figures() -> None:
    verdict = judge_canary(stats(latencies=[x * 3 for x in FAST]), POLICY)
    assert verdict.action == "rollback" and "p95 latency" in verdict.reasons[0] and "ratio 3.00" in verdict.reasons[0]


def test_skewed_predictions_are_rolled_back() -> None:
    verdict = judge_canary(stats(predictions=list(rng.beta(8, 2, 500))), POLICY)
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
