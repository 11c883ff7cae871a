"""The router: which model answers a request, champion or canary.

The canary gets ``weight`` percent of requests. A request that carries a key (a user, a
session) always goes the same way for a given weight, so one client does not flip between
models; raising the weight only moves keys from champion to canary, never back.
"""

from __future__ import annotations

import hashlib
import random
import threading
from typing import Literal

__all__ = ["Router"]

Target = Literal["champion", "canary"]
_BUCKETS = 10_000


class Router:
    def __init__(self, weight: float = 0.0, *, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self.weight = weight

    @property
    def weight(self) -> float:
        return self._weight

    @weight.setter
    def weight(self, value: float) -> None:
        if not 0 <= value <= 100:
            raise ValueError(f"canary weight must be between 0 and 100, not {value}")
        with self._lock:
            self._weight = float(value)

    def route(self, key: str | None = None) -> Target:
        """The model that answers: sticky per ``key`` when one is given, random otherwise."""
        threshold = self._weight * _BUCKETS / 100
        if key is None:
            with self._lock:
                bucket = self._random.random() * _BUCKETS
        else:
            bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % _BUCKETS
        return "canary" if bucket < threshold else "champion"
