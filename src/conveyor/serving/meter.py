"""Tokens are money: tokens-per-minute limits per key and per team, and budgets per team and period.

A request ``reserve``s, before the model runs, its prompt's tokens plus its ``max_tokens`` in the
key's and the team's buckets and its worst-case cost in the team's budget; ``settle`` puts back
what the answer did not use once its real counts are known (answer done, stream ended, client
gone). A budget with ``action: reject`` refuses a request whose worst case would cross it, with
the money already reserved by requests in flight counted as spent: however many arrive at once,
the spend stays within the budget (a reservation is a ceiling, not an estimate). ``alert`` answers
and logs once the share ``alert_at`` and the whole budget are passed.

Each worker of a service holds its ``share`` of every limit and budget (as it does of the
request-rate limits); the spend of the current period is read back from the inference log at start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conveyor.policies.errors import RequestRefused
from conveyor.policies.gateway import GatewayPolicy

__all__ = ["Meter", "Reservation", "cost_of", "period_of", "spent_in_log"]

log = logging.getLogger("conveyor.serving")


def cost_of(prompt_tokens: int, completion_tokens: int, pricing: dict[str, float]) -> float:
    """USD for the tokens at the release's prices (per 1,000 input and output tokens)."""
    return (
        prompt_tokens * float(pricing.get("input_per_1k", 0.0))
        + completion_tokens * float(pricing.get("output_per_1k", 0.0))
    ) / 1000


def period_of(period: str, at: datetime) -> str:
    """The budget period ``at`` falls in: 2026-12-01, 2026-W49 or 2026-12."""
    if period == "day":
        return at.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = at.isocalendar()
        return f"{year}-W{week:02d}"
    return at.strftime("%Y-%m")


@dataclass
class Reservation:
    key: str
    team: str
    tokens: int
    cost: float
    period: str | None  # the budget period it counts in (None: the team has no budget)
    settled: bool = False


class _Bucket:
    """Tokens per minute: up to ``capacity`` at once, refilled at capacity / 60 a second."""

    def __init__(self, capacity: float, now: float) -> None:
        self.capacity, self.level, self.at = capacity, capacity, now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.capacity / 60)
        self.at = now

    def wait_for(self, tokens: float) -> float:
        """Seconds until ``tokens`` are there."""
        return max(0.0, (tokens - self.level) * 60 / self.capacity)


class Meter:
    def __init__(
        self,
        policy: GatewayPolicy,
        *,
        share: float = 1.0,
        spent: dict[tuple[str, str], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_keys: int = 10_000,
    ) -> None:
        self.policy, self.share, self._clock, self._wall, self._max = policy, share, clock, wall, max_keys
        self._lock = threading.Lock()
        self._keys: dict[str, _Bucket] = {}
        self._teams: dict[str, _Bucket] = {}
        self.spent: dict[tuple[str, str], float] = dict(spent or {})  # (team, period) -> USD settled
        self.reserved: dict[tuple[str, str], float] = {}  # (team, period) -> USD reserved by requests in flight
        self._alerted: set[tuple[str, str, str]] = set()

    def team_of(self, team: str | None) -> str:
        name = team or self.policy.default_team
        if name not in self.policy.teams:
            raise RequestRefused(
                403,
                f"this key's team {name!r} is not in policies/gateway.yaml; ask an admin to add it or move the key",
                kind="permission_error",
                code="unknown_team",
            )
        return name

    def reserve(self, key: str, team: str, tokens: int, cost: float) -> Reservation:
        """Hold ``tokens`` of the key's and team's minute and ``cost`` of the team's budget; 429 if they are not there."""
        rules = self.policy.teams[team]
        now = self._clock()
        with self._lock:
            period = None
            if rules.budget is not None:
                period = period_of(rules.budget.period, self._wall())
                limit = rules.budget.usd * self.share
                committed = self.spent.get((team, period), 0.0) + self.reserved.get((team, period), 0.0)
                if rules.budget.action == "reject" and committed + cost > limit:
                    raise RequestRefused(
                        429,
                        f"team {team!r} has used its budget of ${rules.budget.usd:g} for {period} "
                        f"(${committed / self.share:.4f} spent or reserved; this request could cost ${cost:.4f})",
                        kind="insufficient_quota",
                        code="budget_exceeded",
                    )
            buckets = [
                ("key", self._bucket(self._keys, key, self.policy.key_tokens_per_minute, now)),
                (f"team {team!r}", self._bucket(self._teams, team, rules.tokens_per_minute, now)),
            ]
            for name, bucket in buckets:
                if tokens > bucket.capacity:
                    raise RequestRefused(
                        429,
                        f"this request may use {tokens} tokens, over the {name}'s limit of "
                        f"{bucket.capacity / self.share:.0f} tokens per minute; ask for fewer max_tokens",
                        kind="rate_limit_error",
                        param="max_tokens",
                        code="tokens_per_minute",
                    )
                if bucket.level < tokens:
                    wait = bucket.wait_for(tokens)
                    raise RequestRefused(
                        429,
                        f"the {name}'s limit of {bucket.capacity / self.share:.0f} tokens per minute is used up; "
                        f"retry in {wait:.1f} s",
                        kind="rate_limit_error",
                        code="tokens_per_minute",
                    )
            for _, bucket in buckets:
                bucket.level -= tokens
            if period is not None:
                self.reserved[(team, period)] = self.reserved.get((team, period), 0.0) + cost
        return Reservation(key, team, tokens, cost, period)

    def settle(self, reservation: Reservation, tokens: int, cost: float) -> None:
        """The request's real ``tokens`` and ``cost``: what it reserved and did not use goes back."""
        if reservation.settled:
            return
        reservation.settled = True
        now = self._clock()
        unused = max(0, reservation.tokens - tokens)
        with self._lock:
            for buckets, name in ((self._keys, reservation.key), (self._teams, reservation.team)):
                bucket = buckets.get(name)
                if bucket is not None:
                    bucket.refill(now)
                    bucket.level = min(bucket.capacity, bucket.level + unused)
            if reservation.period is not None:
                where = (reservation.team, reservation.period)
                self.reserved[where] = max(0.0, self.reserved.get(where, 0.0) - reservation.cost)
                self.spent[where] = self.spent.get(where, 0.0) + cost
                self._alert(reservation.team, reservation.period)

    def spend(self, team: str) -> tuple[float, float | None]:
        """The team's spend this period (this worker's) and its budget (its share), if it has one."""
        rules = self.policy.teams.get(team)
        if rules is None or rules.budget is None:
            return 0.0, None
        period = period_of(rules.budget.period, self._wall())
        return self.spent.get((team, period), 0.0), rules.budget.usd * self.share

    def _alert(self, team: str, period: str) -> None:
        budget = self.policy.teams[team].budget
        assert budget is not None  # a period is only set for a team with a budget
        used = self.spent.get((team, period), 0.0) / (budget.usd * self.share)
        for level, name in ((1.0, "all"), (budget.alert_at, f"{budget.alert_at:.0%}")):
            if used >= level and (team, period, name) not in self._alerted:
                self._alerted.add((team, period, name))
                log.warning(
                    "team %r has spent %s of its $%g budget for %s (%.0f%%)", team, name, budget.usd, period, used * 100
                )
                break

    def _bucket(self, buckets: dict[str, _Bucket], name: str, per_minute: int, now: float) -> _Bucket:
        bucket = buckets.get(name)
        if bucket is None:
            if len(buckets) >= self._max:  # a stream of new names cannot grow it without bound
                buckets.pop(next(iter(buckets)))
            bucket = buckets[name] = _Bucket(per_minute * self.share, now)
        bucket.refill(now)
        return bucket


def spent_in_log(
    folder: Path, policy: GatewayPolicy, *, share: float = 1.0, at: datetime | None = None
) -> dict[tuple[str, str], float]:
    """What each team with a budget spent in its current period, by the logged requests in ``folder``."""
    # here: pandas only when the log is read
    from conveyor.registry.inference_log import read_log

    spent: dict[tuple[str, str], float] = {}
    if not folder.is_dir():
        return spent
    at = at or datetime.now(UTC)
    since = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=7
    )  # a week may begin last month
    rows = read_log(folder, since=since)
    if "cost_usd" not in rows.columns:
        return spent
    for team, rules in policy.teams.items():
        if rules.budget is None:
            continue
        period = period_of(rules.budget.period, at)
        mine = rows[rows["team"] == team]
        in_period = mine["time"].map(lambda t, p=rules.budget.period: period_of(p, t.to_pydatetime())) == period
        spent[(team, period)] = float(mine.loc[in_period, "cost_usd"].sum()) * share
    return spent
