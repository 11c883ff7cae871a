"""Exact answers kept for deterministic requests: keyed by the release's digest and the whole request."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

__all__ = ["AnswerCache"]


class AnswerCache:
    """Exact answers by key (the release's digest and the whole request), least recently used first out."""

    def __init__(self, max_entries: int, ttl_seconds: float) -> None:
        self.max_entries, self.ttl = max_entries, ttl_seconds
        self._entries: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if time.monotonic() - found[0] > self.ttl:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return found[1]

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic(), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
