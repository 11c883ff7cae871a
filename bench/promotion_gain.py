"""Beating the champion against noise: how often each rule calls a tie a win, and how often it sees a real gain.

Each trial draws a holdout of HOLDOUT rows from one latent risk (labels from it), and scores for
a champion and a candidate that read it through their own noise:

  - twins: both read it through the same amount of noise (equally good models: any "win" is a
    false alarm);
  - better: the candidate reads it through less noise (a real gain of about +0.01 ROC AUC).

The same scores are judged by the old rule (the point difference on the holdout ≥ min_delta 0)
and by the shipped one (``pipelines.evaluate.gain_interval``: a 95% paired-bootstrap interval of
1,000 resamples; its lower end ≥ 0 beats, its upper end < 0 does not, across is inconclusive,
which may go to canary but not to champion). Bounded: TRIALS trials a case.

    .venv/bin/python bench/promotion_gain.py [--trials 200] [--holdout 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _Scored:
    """A model that answers the scores drawn for the holdout's rows (looked up by row index)."""

    classes_ = np.array([0, 1])

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        p = self.scores[frame.index.to_numpy()]
        return np.column_stack([1 - p, p])

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return (self.scores[frame.index.to_numpy()] >= 0.5).astype(int)


def trial(rng: np.random.Generator, rows: int, config, case: str) -> tuple[float, tuple[float, float]]:
    from sklearn.metrics import roc_auc_score

    from conveyor.pipelines.evaluate import gain_interval

    risk = rng.normal(0, 1, rows)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(risk - 1.2)))).astype(int)
    noise = {"twins": (1.0, 1.0), "better": (1.0, 0.88)}[case]  # champion's, candidate's
    champion, candidate = (1 / (1 + np.exp(-(risk + rng.normal(0, n, rows) - 1.2))) for n in noise)
    holdout = pd.DataFrame(dict.fromkeys(config.features.numeric, 0.0), index=range(rows))
    for column in config.features.categorical:
        holdout[column] = "x"
    holdout[config.target] = y
    point = roc_auc_score(y, candidate) - roc_auc_score(y, champion)
    interval = gain_interval(_Scored(candidate), _Scored(champion), config, holdout, "roc_auc")
    assert interval is not None
    return point, interval


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--holdout", type=int, default=2000)
    args = parser.parse_args()
    from conveyor.policies.project import load_project

    config = load_project(ROOT / "conveyor.yaml", check_data=False)
    rng = np.random.default_rng(20261202)
    print(f"{args.trials} trials a case, {args.holdout:,} holdout rows, 1,000 resamples, min_delta 0")
    print(f"{'case':8} {'mean gain':>10} {'old: beats':>11} {'new: beats':>11} {'inconclusive':>13} {'refused':>8}")
    started = time.perf_counter()
    for case in ("twins", "better"):
        results = [trial(rng, args.holdout, config, case) for _ in range(args.trials)]
        points = np.array([p for p, _ in results])
        lows, highs = np.array([i[0] for _, i in results]), np.array([i[1] for _, i in results])
        beats, refused = lows >= 0, highs < 0
        print(
            f"{case:8} {points.mean():>+10.4f} {np.mean(points >= 0):>11.1%} {beats.mean():>11.1%} "
            f"{np.mean(~beats & ~refused):>13.1%} {refused.mean():>8.1%}"
        )
    took = time.perf_counter() - started
    print(f"({took / (2 * args.trials):.2f} s a trial, one interval each)")
    print("twins: 'beats' is the false-alarm rate of going straight to champion (old rule ~50 %, new ~2.5 %);")
    print("better: 'beats' is the power to see a real gain; 'inconclusive' may still go to canary.")


if __name__ == "__main__":
    main()
