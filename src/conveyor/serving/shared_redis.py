"""The workers' shared state in Redis (the server profile): replicas on several machines share one service run.

The same interface as ``serving.shared.SharedState`` (see there for what is shared and why): the
desired models and the canary row as JSON values changed by optimistic transactions (``WATCH`` on
the key, a compare-and-set on ``epoch``), the observations in one list per run, role and step
window, the lead as a lease (``SET NX PX``, renewed by its holder). When Redis does not answer,
every read returns the last state read, writes wait (observations in a bounded buffer, sent when
it is back), nobody leads, and requests are served as before. A Redis that comes back empty is
given the last known state again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, replace
from typing import Any

from conveyor.serving.shared import CanaryRow, Desired, Observation

__all__ = ["RedisSharedState"]

log = logging.getLogger("conveyor.serving")

_OBSERVATIONS_KEPT = 100_000  # per run, role and window, in Redis
_PENDING_KEPT = 50_000  # observations held while Redis does not answer

# Renew the lease only while this worker holds it; release it only then.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisSharedState:
    """``SharedState``'s interface on Redis: replicas on several machines share one service run."""

    LEASE_MS = 2_000  # a dead leader's lease lapses within this; the holder renews it every tick

    def __init__(self, url: str, run: str) -> None:
        import redis

        self._redis = redis
        self.client: Any = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.prefix = f"conveyor:serving:{run}"
        self.me = os.urandom(8).hex()
        self.leading = False
        self._desired = Desired()
        self._canary = CanaryRow()
        self._pending: list[Observation] = []
        self._pending_lock = threading.Lock()
        self._reachable = True
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)
        self._guarded(self._create, None)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _create(self) -> None:
        self.client.set(self._key("desired"), json.dumps(asdict(Desired())), nx=True)
        self.client.set(self._key("canary"), json.dumps(asdict(CanaryRow())), nx=True)

    def _guarded(self, action: Any, fallback: Any) -> Any:
        """``action()``, or ``fallback`` while Redis does not answer (said once per outage)."""
        try:
            result = action()
        except self._redis.RedisError as exc:
            if self._reachable:
                log.warning(
                    "the replicas' shared state (Redis) does not answer (%s): serving the last known state", exc
                )
                self._reachable = False
            self.leading = False
            return fallback
        if not self._reachable:
            log.warning("the replicas' shared state (Redis) answers again")
            self._reachable = True
            self._guarded(self._restore, None)
        return result

    def _restore(self) -> None:
        """Back after an outage: a Redis that lost its keys (restarted without persistence) gets this
        worker's last known desired models and canary row; one that kept them keeps its own."""
        self.client.set(self._key("desired"), json.dumps(asdict(self._desired)), nx=True)
        self.client.set(self._key("canary"), json.dumps(asdict(self._canary)), nx=True)

    def close(self) -> None:
        if self.leading:
            self._guarded(lambda: self._release(keys=[self._key("leader")], args=[self.me]), None)
            self.leading = False
        self.client.close()

    # -- leadership ---------------------------------------------------------------------------

    def try_lead(self) -> bool:
        def attempt() -> bool:
            key = self._key("leader")
            if self.leading and self._renew(keys=[key], args=[self.me, self.LEASE_MS]):
                return True
            return bool(self.client.set(key, self.me, nx=True, px=self.LEASE_MS))

        self.leading = bool(self._guarded(attempt, False))
        return self.leading

    # -- desired models and the canary: JSON values, compare-and-set on their epoch -------------

    def desired(self) -> Desired:
        def read() -> Desired:
            raw = self.client.get(self._key("desired"))
            self._desired = Desired(**json.loads(raw)) if raw else Desired()
            return self._desired

        return self._guarded(read, self._desired)

    def set_desired(self, champion: str | None, canary: str | None) -> Desired:
        def change(pipe: Any) -> None:
            raw = pipe.get(self._key("desired"))
            current = Desired(**json.loads(raw)) if raw else Desired()
            pipe.multi()
            if (current.champion, current.canary) != (champion, canary):
                new = Desired(champion, canary, current.epoch + 1)
                pipe.set(self._key("desired"), json.dumps(asdict(new)))

        self._guarded(lambda: self.client.transaction(change, self._key("desired")), None)
        return self.desired()

    def canary(self) -> CanaryRow:
        def read() -> CanaryRow:
            raw = self.client.get(self._key("canary"))
            self._canary = _row_from_json(raw) if raw else CanaryRow()
            return self._canary

        return self._guarded(read, self._canary)

    def change_canary(self, expected_epoch: int, **changes: Any) -> CanaryRow | None:
        key = self._key("canary")

        def change() -> CanaryRow | None:
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    current = _row_from_json(raw) if raw else CanaryRow()
                    if current.epoch != expected_epoch:
                        return None
                    new = replace(current, **changes, epoch=current.epoch + 1)
                    pipe.multi()
                    pipe.set(key, json.dumps(asdict(new)))
                    pipe.execute()
                except self._redis.WatchError:
                    return None  # another worker changed it first
            self._canary = new
            return new

        return self._guarded(change, None)

    # -- observations ---------------------------------------------------------------------------

    def add(self, observations: Iterable[Observation]) -> None:
        with self._pending_lock:
            self._pending.extend(observations)
            del self._pending[:-_PENDING_KEPT]
            pending, self._pending = self._pending, []
        if not pending:
            return

        def send() -> bool:
            stamp = time.time()
            with self.client.pipeline(transaction=False) as pipe:
                keys = set()
                for o in pending:
                    key = self._key("obs", o.run, o.role, str(o.window))
                    if key not in keys:
                        keys.add(key)
                        pipe.sadd(self._key("obs", o.run, o.role, "windows"), o.window)
                    pipe.rpush(key, json.dumps({**asdict(o), "at": stamp}))
                for key in keys:
                    pipe.ltrim(key, -_OBSERVATIONS_KEPT, -1)
                pipe.execute()
            return True

        if not self._guarded(send, False):
            with self._pending_lock:  # kept for the next flush, oldest first
                self._pending[:0] = pending
                del self._pending[:-_PENDING_KEPT]

    def observations(self, run: str, role: str, *, window: int | None = None, limit: int = 10_000) -> list[Observation]:
        """One list per run, role and window: a step's analysis reads its window's list only (its
        newest ``limit``); without a window, the newest windows' until ``limit``."""

        def read() -> list[Observation]:
            if window is not None:
                windows = [window]
            else:
                windows = sorted(
                    (int(w) for w in self.client.smembers(self._key("obs", run, role, "windows"))), reverse=True
                )
            rows: list[dict[str, Any]] = []
            for number in windows:
                wanted = limit - len(rows)
                if wanted <= 0:
                    break
                raw = self.client.lrange(self._key("obs", run, role, str(number)), -wanted, -1)
                rows[:0] = [json.loads(r) for r in raw]
            return [_observation(r) for r in rows]

        return self._guarded(read, [])

    def forget(self, keep_run: str | None) -> None:
        def drop() -> None:
            keep = self._key("obs", keep_run or "", "")
            stale = [k for k in self.client.scan_iter(match=self._key("obs", "*")) if not k.decode().startswith(keep)]
            if stale:
                self.client.delete(*stale)

        self._guarded(drop, None)


def _row_from_json(raw: bytes | str) -> CanaryRow:
    return CanaryRow(**json.loads(raw))


def _observation(row: dict[str, Any]) -> Observation:
    row.pop("at", None)
    row["predictions"] = tuple(row["predictions"])
    return Observation(**row)
