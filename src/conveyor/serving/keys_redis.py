"""The API keys in Redis (the server profile): one list for every replica of a service.

Each change bumps a version that the replicas poll off the request path (``serving.auth``); the
local file is kept as a copy of what was last read and seeds an empty Redis. When Redis does not
answer, a command that would change a key says so and changes nothing (``KeysUnavailable``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor.registry.servers import redacted
from conveyor.serving.auth import FileKeyStore, KeysUnavailable, write_key_file

__all__ = ["RedisKeyStore"]


class RedisKeyStore:
    """The entries in Redis under ``conveyor:api-keys:<namespace>``, with a version bumped by each
    change (a ``WATCH``ed transaction); the local file is kept as a copy and seeds an empty Redis."""

    def __init__(self, url: str, namespace: str, copy: Path) -> None:
        import redis

        self._redis = redis
        self.url = url
        self.client: Any = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.entries_key, self.version_key = f"conveyor:api-keys:{namespace}", f"conveyor:api-keys:{namespace}:version"
        self.copy = copy
        self._read_once = False

    def _answered(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except self._redis.RedisError as exc:
            raise KeysUnavailable(
                f"The Redis at {_redacted(self.url)}, which keeps the API keys, does not answer ({exc}).",
                hint="Nothing was changed. Start it, or fix CONVEYOR_REDIS_URL; `conveyor doctor` checks every store.",
            ) from None

    def stamp(self) -> object:
        version = self._answered(lambda: self.client.get(self.version_key))
        if version is None and not self._read_once and self.copy.is_file():
            # An empty Redis met first: seeded with this machine's copy (later, an emptied Redis
            # is given the keys last read instead, which are newer than any copy).
            self.restore(FileKeyStore(self.copy).read())
            version = self._answered(lambda: self.client.get(self.version_key))
        self._read_once = True
        return version

    def read(self) -> list[dict]:
        raw = self._answered(lambda: self.client.get(self.entries_key))
        entries = list(json.loads(raw)) if raw else []
        try:
            copied = FileKeyStore(self.copy).read()
        except ValueError:  # a damaged copy: replaced by what Redis holds
            copied = None
        if copied != entries:
            write_key_file(self.copy, entries)  # the copy follows what was read
        return entries

    def change(self, edit: Callable[[list[dict]], list[dict]]) -> list[dict]:
        self.stamp()  # seeds an empty Redis first

        def attempt(pipe: Any) -> None:
            raw = pipe.get(self.entries_key)
            entries = edit(list(json.loads(raw)) if raw else [])
            pipe.multi()
            pipe.set(self.entries_key, json.dumps(entries))
            pipe.incr(self.version_key)
            done.append(entries)

        done: list[list[dict]] = []
        self._answered(lambda: self.client.transaction(attempt, self.entries_key, self.version_key))
        write_key_file(self.copy, done[-1])
        return done[-1]

    def restore(self, entries: list[dict]) -> None:
        def put() -> None:
            with self.client.pipeline() as pipe:
                pipe.set(self.entries_key, json.dumps(entries), nx=True)
                pipe.set(self.version_key, 1, nx=True)
                pipe.execute()

        self._answered(put)

    def close(self) -> None:
        self.client.close()


def _redacted(url: str) -> str:

    return redacted(url)
