"""decide_promotion is pure: facts and a policy in, a decision with every reason out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conveyor.policies.errors import PolicyInvalid
from conveyor.policies.loading import load_policy
from conveyor.policies.promotion import Candidate, PromotionPolicy, decide_promotion
from conveyor.policies.signing import SigningPolicy
from tests.conftest import REPO

POLICY = PromotionPolicy.model_validate(
    {
        "thresholds": {"roc_auc": {"min": 0.8}, "log_loss": {"max": 0.45}},
        "beat_champion": {"metric": "roc_auc", "min_delta": 0.01},
        "max_model_size_mb": 10,
    }
)


def candidate(**changes) -> Candidate:
    facts = {
        "name": "m",
        "version": "5",
        "signature_verified": True,
        "validation_passed": True,
        "clean_tree": True,
        "size_bytes": 2_000_000,
        "metrics": {"roc_auc": 0.86, "log_loss": 0.35},
        "champion_metrics": {"roc_auc": 0.84, "log_loss": 0.36},
    }
    return Candidate(**{**facts, **changes})


def test_good_candidate_is_promoted_with_what_was_checked() -> None:
    decision = decide_promotion(candidate(), "4", POLICY)
    assert decision.ok
    assert any("beats champion v4" in r for r in decision.reasons)


def test_no_champion_yet_is_handled_explicitly() -> None:
    decision = decide_promotion(candidate(champion_metrics=None), None, POLICY)
    assert decision.ok and "no champion yet: nothing to beat" in decision.reasons


def test_every_failed_rule_is_a_reason() -> None:
    decision = decide_promotion(
        candidate(
            signature_verified=False,
            validation_passed=False,
            size_bytes=20_000_000,
            metrics={"roc_auc": 0.7, "log_loss": 0.5},
        ),
        "4",
        POLICY,
    )
    assert not decision.ok
    text = " | ".join(decision.reasons)
    for expected in (
        "did not verify",
        "did not pass validation",
        "exceeds the maximum 10 MB",
        "roc_auc 0.7000 is below the minimum 0.8",
        "log_loss 0.5000 is above the maximum 0.45",
        "does not beat champion v4",
    ):
        assert expected in text


def test_must_beat_the_champion_by_the_delta() -> None:
    decision = decide_promotion(candidate(metrics={"roc_auc": 0.845, "log_loss": 0.35}), "4", POLICY)
    assert not decision.ok and "change +0.0050" in decision.reasons[0]


def test_lower_is_better_metrics_compare_the_right_way() -> None:
    policy = POLICY.model_copy(
        update={"beat_champion": POLICY.beat_champion.model_copy(update={"metric": "log_loss", "min_delta": 0.0})}
    )
    assert decide_promotion(candidate(), "4", policy).ok  # 0.35 < 0.36
    worse = candidate(metrics={"roc_auc": 0.9, "log_loss": 0.40})
    assert not decide_promotion(worse, "4", policy).ok


def test_a_gain_is_judged_by_its_holdout_interval_and_an_inconclusive_one_waits_for_the_canary() -> None:
    def with_interval(low: float, high: float) -> Candidate:
        return candidate(champion_metrics={"roc_auc": 0.84, "gain_low_roc_auc": low, "gain_high_roc_auc": high})

    clear = decide_promotion(with_interval(0.012, 0.03), "4", POLICY)  # the whole interval clears 0.01
    assert clear.ok and any("95% interval [+0.0120, +0.0300] clears +0.01" in r for r in clear.reasons)
    below = decide_promotion(with_interval(-0.01, 0.009), "4", POLICY, target="canary")
    assert not below.ok and any("does not beat champion v4" in r for r in below.reasons)
    noise = with_interval(-0.004, 0.044)  # a point gain of +0.02 the holdout cannot tell from noise
    assert decide_promotion(noise, "4", POLICY, target="canary").ok
    straight = decide_promotion(noise, "4", POLICY, target="champion")
    assert not straight.ok and "promote it to canary first" in straight.reasons[0]
    assert decide_promotion(noise, "4", POLICY, target="champion", canary_passed=True).ok


def test_unknown_champion_metrics_refuse_rather_than_guess() -> None:
    decision = decide_promotion(candidate(champion_metrics=None), "4", POLICY)
    assert not decision.ok and "on the same holdout is not known" in decision.reasons[0]


def test_clean_tree_required_when_the_policy_says_so() -> None:
    policy = PromotionPolicy.model_validate({"require": {"clean_tree": True}})
    assert not decide_promotion(candidate(clean_tree=False), None, policy).ok
    assert not decide_promotion(candidate(clean_tree=None), None, policy).ok
    assert decide_promotion(candidate(clean_tree=True), None, policy).ok


def test_the_repositorys_policies_load() -> None:
    assert load_policy(REPO / "policies" / "promotion.yaml", PromotionPolicy).beat_champion.metric == "roc_auc"
    assert load_policy(REPO / "policies" / "signing.yaml", SigningPolicy).trust_project_key


@pytest.mark.parametrize(
    "text, message",
    [
        ("thresholds: {roc_auc: {}}\n", "give `min`, `max` or both"),
        ("require: {trusted_signature: false}\n", "`require.trusted_signature`"),
        ("max_model_size_mb: -1\n", "`max_model_size_mb`"),
        ("beat_champion: {min_delta: 0.1}\n", "`beat_champion.metric`"),
        ("targets: [production]\n", "`targets.0`"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("thresholds: [unclosed\n", "is not valid YAML"),
    ],
)
def test_malformed_promotion_policy(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "promotion.yaml"
    path.write_text(text)
    with pytest.raises(PolicyInvalid, match=re.escape(message)):
        load_policy(path, PromotionPolicy)


def test_signing_policy_needs_someone_to_trust(tmp_path: Path) -> None:
    path = tmp_path / "signing.yaml"
    path.write_text("trust_project_key: false\n")
    with pytest.raises(PolicyInvalid, match="no signer is trusted"):
        load_policy(path, SigningPolicy)
    path.write_text("sign_with: certificate\n")
    with pytest.raises(PolicyInvalid, match="needs a `certificate:` section"):
        load_policy(path, SigningPolicy)


def test_expected_calibration_error_is_a_promotion_rule() -> None:
    policy = PromotionPolicy.model_validate({"thresholds": {"ece": {"max": 0.05}}})
    calibrated = candidate(metrics={"roc_auc": 0.86, "ece": 0.03}, champion_metrics=None)
    assert decide_promotion(calibrated, None, policy).ok
    overconfident = decide_promotion(candidate(metrics={"roc_auc": 0.86, "ece": 0.12}), None, policy)
    assert not overconfident.ok and "ece 0.1200 is above the maximum 0.05" in overconfident.reasons
    rule = PromotionPolicy.model_validate({"beat_champion": {"metric": "ece", "min_delta": 0.0}})
    better = candidate(metrics={"ece": 0.02}, champion_metrics={"ece": 0.04})
    assert decide_promotion(better, "4", rule).ok  # lower is better
