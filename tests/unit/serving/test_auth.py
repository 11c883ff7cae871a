"""API keys are stored as SHA-256 and checked exactly and cheaply; revocation reaches a running
reader within its recheck; rate limits hold per caller and stay bounded in memory."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from conveyor.policies.errors import UnknownKey
from conveyor.serving.auth import ApiKeys, RateLimiter


def test_keys_are_stored_hashed_and_checked_exactly(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    keys = ApiKeys(path)
    client, admin = keys.create("risk-app"), keys.create("ops", admin=True)
    stored = path.read_text()
    assert client not in stored and admin not in stored  # only hashes on disk
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reopened = ApiKeys(path)
    assert reopened.check(client).name == "risk-app" and not reopened.check(client).admin
    assert reopened.check(admin).admin
    assert reopened.check(client[:-1] + ("A" if client[-1] != "A" else "B")) is None  # one character off
    assert reopened.check(None) is None and reopened.check("") is None and reopened.check("cvk_guess") is None
    assert reopened.check(client + "x" * 300) is None  # overlong: refused before hashing
    assert len(json.loads(stored)) == 2


def test_a_check_costs_microseconds_whatever_is_presented(tmp_path: Path) -> None:
    keys = ApiKeys(tmp_path / "api-keys.json")
    real = keys.create("app")
    wrong_with_a_real_id = real[:12] + "x" * (len(real) - 12)
    started = time.perf_counter()
    for _ in range(5_000):
        assert keys.check(wrong_with_a_real_id) is None
        assert keys.check(real) is not None
    per_check = (time.perf_counter() - started) / 10_000
    assert per_check < 200e-6, f"{per_check * 1e6:.0f} µs a check"  # scrypt took ~60,000 µs


def test_revoke_and_rotate_reach_a_running_reader_within_its_recheck(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    now = [0.0]
    service = ApiKeys(path, recheck=0.25, clock=lambda: now[0])  # as a running service holds it
    operator = ApiKeys(path)
    old = operator.create("app", per_second=5)
    now[0] += 1
    assert service.check(old).name == "app"
    new = operator.rotate("app")
    now[0] += 0.3
    assert service.check(old) is None and service.check(new).per_second == 5
    assert operator.revoke("app") == 1
    now[0] += 0.3
    assert service.check(new) is None
    with pytest.raises(UnknownKey):
        operator.revoke("app")


def test_keys_of_the_old_scrypt_format_are_refused_and_listed_as_outdated(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    path.write_text(json.dumps([{"id": "cvk_abcdefgh", "name": "old", "admin": True, "salt": "00", "hash": "11"}]))
    keys = ApiKeys(path)
    assert keys.check("cvk_abcdefgh" + "z" * 31) is None
    assert keys.entries() == [
        {"id": "cvk_abcdefgh", "name": "old", "admin": True, "rate_limit": None, "team": None, "outdated": True}
    ]
    assert keys.check(keys.rotate("old")).admin  # rotating gives the same role a new key


def test_rate_limit_allows_a_burst_then_the_rate_per_caller() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # another caller has its own bucket
    now[0] += 0.5  # one token back at 2 per second
    assert limiter.allow("a") and not limiter.allow("a")
    now[0] += 10
    assert sum(limiter.allow("a") for _ in range(10)) == 3  # refilled to the burst, no more


def test_the_limiter_forgets_the_least_recent_callers_past_its_size() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_callers=100)
    for i in range(10_000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) == 100
