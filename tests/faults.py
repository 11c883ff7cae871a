"""Models that misbehave when served: the canaries of the serving tests.

``FaultyClassifier`` is a real scikit-learn classifier (a small gradient-boosted model inside)
that trains, evaluates, signs and registers like any other. Served in a process where
``CONVEYOR_TEST_FAULTS=1``, it misbehaves as told: ``raise`` fails a share of calls, ``slow``
takes ``delay`` seconds longer, ``crash`` kills its own process on a share of calls, ``skew``
answers 1 - p, ``none`` behaves.
"""

from __future__ import annotations

import os
import random
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier

_random = random.Random(11)


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
        if armed and self.fault == "slow":
            time.sleep(self.delay)
        proba = self.model_.predict_proba(x)
        return proba[:, ::-1].copy() if armed and self.fault == "skew" else proba

    def predict(self, x):
        return self.classes_[np.argmax(self.predict_proba(x), axis=1)]
