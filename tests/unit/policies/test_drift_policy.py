"""The drift policy: windows, bounds that match the metric, no silent defaults for a broken file."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.policies.drift import load_drift_policy, parse_window
from conveyor.policies.errors import PolicyInvalid
from tests.conftest import REPO


def test_the_shipped_policy_loads() -> None:
    policy = load_drift_policy(REPO / "policies")
    assert policy.drift.share == 0.3 and policy.quality.describe() == "roc_auc >= 0.75"


@pytest.mark.parametrize(
    ("text", "rows", "seconds"), [("5000", 5000, None), ("30m", None, 1800), ("24h", None, 86400), ("7d", None, 604800)]
)
def test_windows_by_count_or_duration(text: str, rows: int | None, seconds: int | None) -> None:
    window = parse_window(text)
    assert (window.rows, window.seconds) == (rows, seconds)


@pytest.mark.parametrize("text", ["", "0", "-5", "5 weeks", "1.5h", "h"])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="neither a row count"):
        parse_window(text)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("quality: {metric: roc_auc, min: 0.7, max: 0.9}", "exactly one of `min`"),
        ("quality: {metric: rmse, min: 3}", "lower-is-better"),
        ("quality: {metric: auc, min: 0.7}", "unknown metric 'auc'"),
        ("window: {default: soon}", "neither a row count"),
        ("drift: {share: 2}", "drift.share"),
        ("retraining: {cooldown: 5}", "retraining.cooldown"),
    ],
)
def test_a_broken_policy_names_the_field(tmp_path: Path, body: str, named: str) -> None:
    (tmp_path / "drift.yaml").write_text(body + "\n")
    with pytest.raises(PolicyInvalid, match=named.replace("(", r"\(")):
        load_drift_policy(tmp_path)
