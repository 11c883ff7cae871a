"""API keys are stored hashed and checked exactly; rate limits hold per caller."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from serving.auth import ApiKeys, RateLimiter


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
    assert len(json.loads(stored)) == 2


def test_rate_limit_allows_a_burst_then_the_rate_per_caller() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # another caller has its own bucket
    now[0] += 0.5  # one token back at 2 per second
    assert limiter.allow("a") and not limiter.allow("a")
    now[0] += 10
    assert sum(limiter.allow("a") for _ in range(10)) == 3  # refilled to the burst, no more
