"""Who may call the service: API keys (predict or admin), per-key rate limits, and a limit on failed attempts.

A key is ``cvk_`` and 32 random bytes (256 bits), so it needs no slow password hash: the file
(``<home>/serving/api-keys.json``) keeps its SHA-256 and its first 12 characters as an id, and
checking a presented key is one SHA-256 and a constant-time compare, a few microseconds, so a
caller without a key cannot make the service work for its refusal. A running service re-reads
the file when it changes (at most every ``recheck`` seconds), so ``conveyor api-key revoke`` or
``rotate`` stops a key within that time, whichever worker sees it.

In the server profile (``redis_url`` set) the entries live in Redis (``serving.keys_redis``), so the
replicas of a service on several machines, and the command that revokes a key on any of them,
share one list: a revocation stops the key on every replica within ``recheck``. Each change
bumps a version that the replicas poll (one ``GET`` every 0.2 s, from the service's background
thread: never one per request, and no request waits on Redis). When
Redis does not answer, a replica goes on with the keys it last read (no change can be made
meanwhile: the commands that change keys say Redis does not answer), and gives them back to a
Redis that comes back empty; the file in ``home`` is kept as a copy and seeds an empty Redis.

Keys made by earlier versions (salted scrypt, field ``salt``) are no longer accepted: ``list``
marks them, and ``rotate NAME`` replaces them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.policies.errors import ConfigInvalid, UnknownKey
from conveyor.registry.digests import json_digest

if TYPE_CHECKING:
    from conveyor.registry.workspace import Workspace

__all__ = [
    "ApiKeys",
    "FileKeyStore",
    "KeyStore",
    "KeysUnavailable",
    "RateLimiter",
    "Role",
    "open_api_keys",
    "write_key_file",
]

log = logging.getLogger(__name__)
_ID = 12  # characters of the key kept in clear as its id


class KeysUnavailable(ConfigInvalid):
    """The store of the keys does not answer (exit 2: nothing was changed)."""


class KeyStore(Protocol):
    def stamp(self) -> object:
        """What changes whenever the entries do (None: there are none); raises ``KeysUnavailable``."""

    def read(self) -> list[dict]: ...

    def change(self, edit: Callable[[list[dict]], list[dict]]) -> list[dict]:
        """Replace the entries by ``edit(entries)`` (atomically where the store can); returns them."""

    def restore(self, entries: list[dict]) -> None:
        """Give an emptied store the entries last read."""

    def close(self) -> None: ...


class FileKeyStore:
    """The entries as a JSON file (mode 0600), replaced whole by a rename."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def stamp(self) -> object:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_size, info.st_mtime_ns)

    def read(self) -> list[dict]:
        try:
            entries: list[dict] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        return entries

    def change(self, edit: Callable[[list[dict]], list[dict]]) -> list[dict]:
        entries = edit(self.read())
        write_key_file(self.path, entries)
        return entries

    def restore(self, entries: list[dict]) -> None:
        return None  # a file is not emptied behind our back

    def close(self) -> None:
        return None


def write_key_file(path: Path, entries: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(entries, handle, indent=2)
    partial.replace(path)


def open_api_keys(ws: Workspace, **options: Any) -> ApiKeys:
    """The Workspace's keys: in Redis in the server profile (one list for every replica, namespaced
    by the ledger, which every machine of one deployment shares), else the file in ``home``."""
    path = ws.api_keys_file
    if not ws.settings.redis_url:
        return ApiKeys(path, **options)

    namespace = json_digest({"ledger": str(ws.ledger_url)}).split(":")[-1][:16]
    from conveyor.serving.keys_redis import RedisKeyStore  # here: it builds on this module (and needs redis)

    return ApiKeys(path, store=RedisKeyStore(ws.settings.redis_url, namespace, path), **options)


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
    """The keys (in the file, or in the ``store`` given); ``check`` returns the key's role, or None."""

    def __init__(
        self,
        path: Path,
        *,
        store: KeyStore | None = None,
        recheck: float = 0.25,
        background: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``background``: ``check`` never reads the store; the owner calls ``refresh`` (the
        service does, from its shared-state thread), so no request waits on the store's I/O."""
        self.path = path
        self.store: KeyStore = store or FileKeyStore(path)
        self._recheck, self._clock, self._background = recheck, clock, background
        self._lock = threading.Lock()
        self._stamp: object = None  # what the store's stamp was when last read
        self._checked = float("-inf")
        self._entries: list[dict] = []
        self._by_id: dict[str, list[tuple[bytes, Role]]] = {}
        self._reachable = True
        self._reload(force=True, strict=False)

    # -- reading ------------------------------------------------------------------------------

    def _reload(self, *, force: bool = False, strict: bool = True) -> None:
        """Read the store again if it changed; between checks, at most every ``recheck`` seconds.
        A store that does not answer keeps the keys last read (``strict``: raise instead)."""
        now = self._clock()
        if not force and now - self._checked < self._recheck:
            return
        self._checked = now
        try:
            stamp = self.store.stamp()
            if stamp is None and self._entries:
                self.store.restore(self._entries)  # emptied behind our back: given what we knew
                stamp = self.store.stamp()
            if stamp == self._stamp and not force:
                return
            entries = self.store.read() if stamp is not None else []
        except KeysUnavailable as exc:
            if strict and force:
                raise
            known = self._stamp is not None or bool(self._entries)
            if not known and not self._background:
                return  # a command: it says so itself when it acts
            if self._reachable:
                then = "Serving with the API keys last read." if known else "No API key is accepted until it answers."
                log.warning("%s %s", exc.message, then)
            self._reachable = False
            self._checked = now + 1.0  # and asked again in a second or so, not at every request
            return
        if not self._reachable:
            log.warning("the API keys' store answers again")
        self._reachable = True
        self._apply(entries, stamp)

    def _apply(self, entries: list[dict], stamp: object) -> None:
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
            if not self._background:
                self._reload(strict=False)
            candidates = self._by_id.get(presented[:_ID], ())
        digest = _digest(presented)
        found = None
        for stored, role in candidates:
            if hmac.compare_digest(stored, digest):
                found = role
        return found

    def refresh(self) -> None:
        """Read the store again if it changed (at most every ``recheck``); never raises."""
        with self._lock:
            self._reload(strict=False)

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
        key, entry = _new_entry(name, admin, per_second, burst, team)
        self._change(lambda entries: [*entries, entry])
        return key

    def revoke(self, name: str) -> int:
        """Remove every key of ``name``; returns how many there were."""
        removed: list[int] = []

        def edit(entries: list[dict]) -> list[dict]:
            kept = [e for e in entries if e["name"] != name]
            removed.append(len(entries) - len(kept))
            if not removed[-1]:
                raise UnknownKey(name)
            return kept

        self._change(edit)
        return removed[-1]

    def rotate(self, name: str) -> str:
        """Replace every key of ``name`` by one new key with the same role and limits."""
        made: list[str] = []

        def edit(entries: list[dict]) -> list[dict]:
            old = [e for e in entries if e["name"] == name]
            if not old:
                raise UnknownKey(name)
            limit = old[-1].get("rate_limit") or {}
            key, entry = _new_entry(
                name, old[-1]["admin"], limit.get("per_second"), limit.get("burst"), old[-1].get("team")
            )
            made.append(key)
            return [*(e for e in entries if e["name"] != name), entry]

        self._change(edit)
        return made[-1]

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> ApiKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _change(self, edit: Callable[[list[dict]], list[dict]]) -> None:
        with self._lock:
            self.store.change(edit)
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
