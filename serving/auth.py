"""Who may call the service: API keys (predict or admin), per-key rate limits, and a limit on failed attempts.

A key is ``cvk_`` and 32 random bytes (256 bits), so it needs no slow password hash: the file
(``<home>/serving/api-keys.json``) keeps its SHA-256 and its first 12 characters as an id, and
checking a presented key is one SHA-256 and a constant-time compare, a few microseconds, so a
caller without a key cannot make the service work for its refusal. A running service re-reads
the file when it changes (at most every ``recheck`` seconds), so ``conveyor api-key revoke`` or
``rotate`` stops a key within that time, whichever worker sees it.

Keys made by earlier versions (salted scrypt, field ``salt``) are no longer accepted: ``list``
marks them, and ``rotate NAME`` replaces them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ApiKeys", "RateLimiter", "Role", "UnknownKey"]

_ID = 12  # characters of the key kept in clear as its id


class UnknownKey(LookupError):
    """``revoke`` or ``rotate`` named no key."""


@dataclass(frozen=True)
class Role:
    name: str  # who the key belongs to
    admin: bool
    per_second: float | None = None  # this key's own rate limit, if it has one
    burst: int | None = None
    team: str | None = None  # whose tokens and budget an LLM request spends (None: the policy's default team)
    id: str = ""  # the key's id (its first characters): how the inference log names it


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    """The key file; ``check`` returns the key's role, or None."""

    def __init__(self, path: Path, *, recheck: float = 0.25, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._recheck, self._clock = recheck, clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) of the file last read
        self._checked = float("-inf")
        self._entries: list[dict] = []
        self._by_id: dict[str, list[tuple[bytes, Role]]] = {}
        self._reload(force=True)

    # -- reading ------------------------------------------------------------------------------

    def _reload(self, *, force: bool = False) -> None:
        """Read the file again if it changed; between checks, at most every ``recheck`` seconds."""
        now = self._clock()
        if not force and now - self._checked < self._recheck:
            return
        self._checked = now
        try:
            info = self.path.stat()
            stamp: tuple[int, int, int] | None = (info.st_ino, info.st_size, info.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and not force:
            return
        entries = json.loads(self.path.read_text()) if stamp is not None else []
        by_id: dict[str, list[tuple[bytes, Role]]] = {}
        for entry in entries:
            if "sha256" not in entry:
                continue  # an old scrypt entry: refused (rotate it)
            limit = entry.get("rate_limit") or {}
            role = Role(
                entry["name"],
                entry["admin"],
                limit.get("per_second"),
                limit.get("burst"),
                entry.get("team"),
                entry["id"],
            )
            by_id.setdefault(entry["id"], []).append((bytes.fromhex(entry["sha256"]), role))
        self._entries, self._by_id, self._stamp = entries, by_id, stamp

    def check(self, presented: str | None) -> Role | None:
        """The role of ``presented``, or None: one SHA-256, whatever is presented."""
        if not presented or len(presented) > 200:
            return None
        with self._lock:
            self._reload()
            candidates = self._by_id.get(presented[:_ID], ())
        digest = _digest(presented)
        found = None
        for stored, role in candidates:
            if hmac.compare_digest(stored, digest):
                found = role
        return found

    def entries(self) -> list[dict]:
        """Each key's id, owner and role; never a hash."""
        with self._lock:
            self._reload(force=True)
            return [
                {
                    "id": e["id"],
                    "name": e["name"],
                    "admin": e["admin"],
                    "rate_limit": e.get("rate_limit"),
                    "team": e.get("team"),
                    "outdated": "sha256" not in e,
                }
                for e in self._entries
            ]

    # -- changing -----------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        admin: bool = False,
        per_second: float | None = None,
        burst: int | None = None,
        team: str | None = None,
    ) -> str:
        """A new key for ``name``; the only time the key itself is seen."""
        with self._lock:
            self._reload(force=True)
            key, entry = _new_entry(name, admin, per_second, burst, team)
            self._save([*self._entries, entry])
        return key

    def revoke(self, name: str) -> int:
        """Remove every key of ``name``; returns how many there were."""
        with self._lock:
            self._reload(force=True)
            kept = [e for e in self._entries if e["name"] != name]
            removed = len(self._entries) - len(kept)
            if not removed:
                raise UnknownKey(name)
            self._save(kept)
            return removed

    def rotate(self, name: str) -> str:
        """Replace every key of ``name`` by one new key with the same role and limits."""
        with self._lock:
            self._reload(force=True)
            old = [e for e in self._entries if e["name"] == name]
            if not old:
                raise UnknownKey(name)
            limit = old[-1].get("rate_limit") or {}
            key, entry = _new_entry(
                name, old[-1]["admin"], limit.get("per_second"), limit.get("burst"), old[-1].get("team")
            )
            self._save([*(e for e in self._entries if e["name"] != name), entry])
        return key

    def _save(self, entries: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(entries, handle, indent=2)
        partial.replace(self.path)
        self._stamp = None  # read back what was written, as a service would
        self._reload(force=True)


def _new_entry(
    name: str, admin: bool, per_second: float | None, burst: int | None, team: str | None = None
) -> tuple[str, dict]:
    key = f"cvk_{secrets.token_urlsafe(32)}"
    entry: dict = {"id": key[:_ID], "name": name, "admin": admin, "sha256": _digest(key).hex()}
    if team is not None:
        entry["team"] = team
    if per_second is not None:
        entry["rate_limit"] = {"per_second": per_second, "burst": burst or max(1, int(per_second))}
    return key, entry


class RateLimiter:
    """A token bucket per caller: ``rate`` requests a second on average, bursts up to ``burst``.

    At most ``max_callers`` buckets are kept (the least recently used go first), so a stream of
    new caller names cannot grow it without bound.
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic, max_callers: int = 10_000
    ) -> None:
        self.rate, self.burst, self._clock, self._max = rate, burst, clock, max_callers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, caller: str, *, rate: float | None = None, burst: int | None = None) -> bool:
        """Take a token from ``caller``'s bucket (``rate`` and ``burst`` override the defaults for it)."""
        rate, burst = rate or self.rate, burst or self.burst
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(caller, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            allowed = tokens >= 1.0
            self._buckets[caller] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            return allowed
