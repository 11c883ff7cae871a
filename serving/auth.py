"""Who may call the service: API keys for predictions, a separate admin token, per-key rate limits.

Keys are stored only as salted scrypt hashes (``<home>/serving/api-keys.json``); a key is shown
once, when it is created. Its first 12 characters are kept in clear as an id, so checking a
presented key costs one scrypt (for the entry with that id), not one per stored key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ApiKeys", "RateLimiter", "Role"]

_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


@dataclass(frozen=True)
class Role:
    name: str  # who the key belongs to
    admin: bool
    per_second: float | None = None  # this key's own rate limit, if it has one
    burst: int | None = None


class ApiKeys:
    """A small file of hashed keys; ``check`` returns the key's role, or None."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._entries: list[dict] = []
        self._reload()

    def _reload(self) -> None:
        """Read the file again if it changed (keys created while the service runs)."""
        mtime = self.path.stat().st_mtime if self.path.is_file() else None
        if mtime != self._mtime:
            self._entries = json.loads(self.path.read_text()) if mtime is not None else []
            self._mtime = mtime

    def create(
        self, name: str, *, admin: bool = False, per_second: float | None = None, burst: int | None = None
    ) -> str:
        """A new key for ``name``; the only time the key itself is seen."""
        key = f"cvk_{secrets.token_urlsafe(32)}"
        salt = secrets.token_bytes(16)
        entry = {"id": key[:12], "name": name, "admin": admin, "salt": salt.hex(), "hash": _hash(key, salt).hex()}
        if per_second is not None:
            entry["rate_limit"] = {"per_second": per_second, "burst": burst or max(1, int(per_second))}
        with self._lock:
            self._reload()
            self._save([*self._entries, entry])
        return key

    def revoke(self, name: str) -> int:
        """Remove every key of ``name``; returns how many there were."""
        with self._lock:
            self._reload()
            kept = [e for e in self._entries if e["name"] != name]
            removed = len(self._entries) - len(kept)
            if removed:
                self._save(kept)
            return removed

    def _save(self, entries: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(entries, handle, indent=2)
        partial.replace(self.path)
        self._entries = entries

    def entries(self) -> list[dict]:
        """Each key's id, owner and role; never a hash or salt."""
        with self._lock:
            self._reload()
            return [
                {"id": e["id"], "name": e["name"], "admin": e["admin"], "rate_limit": e.get("rate_limit")}
                for e in self._entries
            ]

    def check(self, presented: str | None) -> Role | None:
        if not presented:
            return None
        with self._lock:
            self._reload()
            entries = list(self._entries)
        for entry in entries:
            if hmac.compare_digest(entry["id"], presented[:12]) and hmac.compare_digest(
                bytes.fromhex(entry["hash"]), _hash(presented, bytes.fromhex(entry["salt"]))
            ):
                limit = entry.get("rate_limit") or {}
                return Role(entry["name"], entry["admin"], limit.get("per_second"), limit.get("burst"))
        return None


def _hash(key: str, salt: bytes) -> bytes:
    return hashlib.scrypt(key.encode(), salt=salt, **_SCRYPT)


class RateLimiter:
    """A token bucket per caller: ``rate`` requests a second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, caller: str, *, rate: float | None = None, burst: int | None = None) -> bool:
        """Take a token from ``caller``'s bucket (``rate`` and ``burst`` override the defaults for it)."""
        rate, burst = rate or self.rate, burst or self.burst
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(caller, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            allowed = tokens >= 1.0
            self._buckets[caller] = (tokens - 1.0 if allowed else tokens, now)
            return allowed
