"""Models that misbehave when served: the canaries of the serving tests.

``FaultyClassifier`` is a real scikit-learn classifier (a small gradient-boosted model inside)
that trains, evaluates, signs and registers like any other. Served in a process where
``CONVEYOR_TEST_FAULTS=1``, it misbehaves as told: ``raise`` fails a share of calls, ``slow``
works ``delay`` seconds of CPU longer, ``crash`` kills its own process on a share of calls, ``skew``
answers 1 - p, ``none`` behaves. The output-contract faults answer on a share of calls with the
wrong number of rows (``rows``), text instead of numbers (``text``), NaN (``nan``), infinity
(``inf``), probabilities 7.5 times too large (``outside``), or three classes for two (``classes``);
``contract`` breaks it in the way named in the file ``$CONVEYOR_TEST_BREACH_FILE`` at that call
(so one trained canary can break it every way in turn).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier

_random = random.Random(11)


def _nan(proba):
    proba = proba.copy()
    proba[0, 1] = np.nan
    return proba


def _inf(proba):
    proba = proba.copy()
    proba[-1, 1] = np.inf
    return proba


_BROKEN = {  # answers that break the output contract, each differently
    "rows": lambda proba: np.vstack([proba, proba[:1]]),
    "text": lambda proba: np.array([["high", "low"]] * len(proba), dtype=object),
    "nan": _nan,
    "inf": _inf,
    "outside": lambda proba: proba * 7.5,
    "classes": lambda proba: np.hstack([proba * 0.5, proba[:, :1] * 0 + 0.5]),
}


class FaultyClassifier(ClassifierMixin, BaseEstimator):
    def __init__(self, fault: str = "none", rate: float = 1.0, delay: float = 0.0) -> None:
        self.fault, self.rate, self.delay = fault, rate, delay

    def fit(self, x, y):
        # The demo champion's estimator, so that only the fault tells the two apart.
        inner = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.08, max_leaf_nodes=31, random_state=7)
        self.model_ = inner.fit(x, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, x):
        armed = os.environ.get("CONVEYOR_TEST_FAULTS") == "1"
        hit = armed and _random.random() < self.rate
        if hit and self.fault == "raise":
            raise RuntimeError("injected fault: this canary fails")
        if hit and self.fault == "crash":
            os._exit(17)
        if armed and self.fault == "slow":  # more work, as a bigger model does: the CPU is busy for `delay` s
            end = time.thread_time() + self.delay
            while time.thread_time() < end:
                pass
        proba = self.model_.predict_proba(x)
        if armed and self.fault == "skew":
            return proba[:, ::-1].copy()
        fault = self.fault
        if fault == "contract" and armed:
            fault = Path(os.environ["CONVEYOR_TEST_BREACH_FILE"]).read_text().strip()
        if hit and fault in _BROKEN:
            return _BROKEN[fault](proba)
        return proba

    def predict(self, x):
        return self.classes_[np.argmax(self.predict_proba(x), axis=1)]
