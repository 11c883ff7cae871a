"""The replicas' shared state in Redis: a private redis-server per test, restarted mid-test."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conveyor.serving.shared import Observation
from conveyor.serving.shared_redis import RedisSharedState
from tests.service import free_port


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: `make test` installs Debian's package when it can")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _seen(run: str, role: str, n: int, worker: str, window: int = 0) -> list[Observation]:
    return [Observation(run, window, role, True, "ok", 5.0 + i, (0.1 * i,), worker) for i in range(n)]


def test_two_replicas_count_each_other_s_traffic_and_one_leads(redis_server: RedisServer) -> None:
    a, b = RedisSharedState(redis_server.url, "svc"), RedisSharedState(redis_server.url, "svc")
    try:
        assert a.try_lead() and not b.try_lead()
        a.add(_seen("r1", "canary", 30, "a"))
        b.add(_seen("r1", "canary", 20, "b"))
        b.add(_seen("r1", "canary", 5, "b", window=1))
        seen = a.observations("r1", "canary", window=0)
        assert len(seen) == 50 and {o.worker for o in seen} == {"a", "b"}
        assert seen[0].predictions == (0.0,) and len(b.observations("r1", "canary", window=1)) == 5

        row = a.canary()
        moved = a.change_canary(row.epoch, state="running", weight=5.0)
        assert moved is not None and b.canary().weight == 5.0
        assert b.change_canary(row.epoch, state="rolled_back") is None  # stale epoch: refused
        assert b.change_canary(moved.epoch, state="rolled_back", weight=0.0) is not None
        assert a.canary().state == "rolled_back"

        first = a.set_desired("3", "4")
        assert b.desired() == first and a.set_desired("3", "4").epoch == first.epoch  # no change, same epoch

        a.close()  # the leader goes: its lease is released, the other takes over
        assert b.try_lead()
        b.forget(keep_run="r2")
        assert b.observations("r1", "canary") == []
    finally:
        b.close()


def test_a_dead_leader_s_lease_lapses(redis_server: RedisServer) -> None:
    a, b = RedisSharedState(redis_server.url, "svc"), RedisSharedState(redis_server.url, "svc")
    try:
        assert a.try_lead()
        started = time.monotonic()
        while not b.try_lead():  # a stops renewing (it died): b leads once the lease runs out
            assert time.monotonic() - started < RedisSharedState.LEASE_MS / 1000 + 1
            time.sleep(0.1)
        assert not a.try_lead()  # and a, back, does not lead beside it
    finally:
        a.close()
        b.close()


def test_a_redis_restart_serves_the_last_known_state_and_loses_no_observation(redis_server: RedisServer) -> None:
    state = RedisSharedState(redis_server.url, "svc")
    try:
        state.try_lead()
        row = state.change_canary(state.canary().epoch, run="r1", state="running", weight=20.0)
        assert row is not None
        state.set_desired("1", "2")
        state.add(_seen("r1", "canary", 10, "a"))

        redis_server.stop()
        started = time.monotonic()
        assert state.canary().weight == 20.0 and state.desired().canary == "2"  # the last known state
        assert not state.try_lead() and not state.leading  # nobody judges without the state
        assert state.change_canary(row.epoch, state="rolled_back") is None
        state.add(_seen("r1", "canary", 7, "a"))  # held, not lost
        assert time.monotonic() - started < 5  # each call gives up quickly (timeouts of 0.5 s)

        redis_server.start()  # an empty Redis (no persistence): the buffered observations arrive
        state.add([])
        assert len(state.observations("r1", "canary")) == 7
        other = RedisSharedState(redis_server.url, "svc")  # and the last known state is restored
        assert other.canary() == row and other.desired().canary == "2"
        other.close()
        assert state.try_lead()
    finally:
        state.close()


def test_a_key_revoked_on_one_machine_stops_on_every_replica_at_once(redis_server: RedisServer, tmp_path: Path) -> None:
    with _machines(redis_server, tmp_path, "laptop", "node-1", "node-2", recheck=0.05) as (admin, *replicas):
        key = admin.create("app")
        time.sleep(0.1)
        assert all(getattr(r.check(key), "name", None) == "app" for r in replicas)
        assert admin.revoke("app") == 1
        started = time.monotonic()
        while any(r.check(key) is not None for r in replicas):
            assert time.monotonic() - started < 0.5, "a replica still accepts the revoked key"
            time.sleep(0.01)
    assert (tmp_path / "laptop" / "api-keys.json").stat().st_mode & 0o777 == 0o600  # the copy, as the file was


@contextmanager
def _machines(server: RedisServer, folder: Path, *names: str, recheck: float = 0.25) -> Iterator[list]:
    """One ``ApiKeys`` per machine on one Redis, each with a home (the keys' file is its copy) of its own."""
    from conveyor.serving.auth import ApiKeys
    from conveyor.serving.keys_redis import RedisKeyStore

    made = []
    try:
        for name in names:
            copy = folder / name / "api-keys.json"
            made.append(ApiKeys(copy, store=RedisKeyStore(server.url, "team", copy), recheck=recheck))
        yield made
    finally:
        for keys in made:
            keys.close()


def test_wrong_keys_cost_no_redis_call_each(redis_server: RedisServer, tmp_path: Path) -> None:
    """A flood of wrong keys is one SHA-256 each; the store is asked once per ``recheck``, not per request."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    with _machines(redis_server, tmp_path, "node") as (keys,):
        keys.create("app")
        client.config_resetstat()
        started = time.monotonic()
        for i in range(20_000):
            assert keys.check(f"cvk_{i:043d}") is None
        seconds = time.monotonic() - started
    calls = client.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
    client.close()
    assert calls <= 2 * (seconds / 0.25 + 1), f"{calls} GETs for 20,000 wrong keys in {seconds:.2f} s"


def test_keys_outlive_a_redis_outage_and_refill_an_emptied_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    from conveyor.serving.auth import ApiKeys, KeysUnavailable, write_key_file

    seeded = tmp_path / "node" / "api-keys.json"
    write_key_file(seeded, [])  # an embedded project's keys, moving to the server profile
    embedded = ApiKeys(seeded)
    kept, gone = embedded.create("app"), embedded.create("old")
    with _machines(redis_server, tmp_path, "node", recheck=0.05) as (replica,):
        assert replica.check(kept) is not None  # an empty Redis is seeded from the file

        redis_server.stop()
        time.sleep(0.1)
        assert replica.check(kept) is not None  # the keys last read, while Redis does not answer
        with (
            _machines(redis_server, tmp_path, "laptop") as (laptop,),
            pytest.raises(KeysUnavailable, match="does not answer"),
        ):
            laptop.revoke("old")
        assert not (tmp_path / "laptop" / "api-keys.json").exists()  # nothing changed, nothing half-written

        redis_server.start()  # empty: the replica gives it back what it knew
        time.sleep(1.2)
        assert replica.check(kept) is not None
        with _machines(redis_server, tmp_path, "laptop") as (admin,):
            assert [e["name"] for e in admin.entries()] == ["app", "old"]
            admin.revoke("old")
        time.sleep(0.1)
        assert replica.check(gone) is None and replica.check(kept) is not None


def test_a_service_s_keys_are_read_by_its_refresh_not_by_a_request(redis_server: RedisServer, tmp_path: Path) -> None:
    from conveyor.serving.auth import ApiKeys
    from conveyor.serving.keys_redis import RedisKeyStore

    copy = tmp_path / "node" / "api-keys.json"
    with _machines(redis_server, tmp_path, "laptop") as (admin,):
        key = admin.create("app")
        served = ApiKeys(copy, store=RedisKeyStore(redis_server.url, "team", copy), recheck=0, background=True)
        try:
            assert served.check(key) is not None
            admin.revoke("app")
            assert served.check(key) is not None  # a request does not read the store...
            served.refresh()
            assert served.check(key) is None  # ...the service's refresh does
            other = admin.create("other")
            served.refresh()
            redis_server.stop()
            started = time.monotonic()
            assert all(served.check(other) is not None for _ in range(100))
            assert time.monotonic() - started < 0.1  # no request waits on a Redis that does not answer
        finally:
            served.close()
