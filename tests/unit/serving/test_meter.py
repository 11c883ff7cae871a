"""Tokens per minute and budgets: reserve before the model runs, settle on the real counts."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from conveyor.policies.errors import RequestRefused
from conveyor.policies.gateway import Budget, GatewayPolicy, Team
from conveyor.serving.meter import Meter, cost_of, period_of


def _meter(**teams: Team) -> tuple[Meter, list[float]]:
    now = [0.0]
    policy = GatewayPolicy(teams={"default": Team(), **teams}, key_tokens_per_minute=1_000)
    return Meter(policy, clock=lambda: now[0], wall=lambda: datetime(2026, 12, 1, tzinfo=UTC)), now


def test_cost_is_priced_per_thousand_tokens_in_and_out() -> None:
    assert cost_of(1_000, 500, {"input_per_1k": 0.1, "output_per_1k": 0.4}) == pytest.approx(0.3)
    assert period_of("week", datetime(2026, 12, 1, tzinfo=UTC)) == "2026-W49"
    assert period_of("month", datetime(2026, 12, 1, tzinfo=UTC)) == "2026-12"


def test_a_team_limit_in_tokens_refuses_past_it_and_refills_over_the_minute() -> None:
    meter, now = _meter(small=Team(tokens_per_minute=300))
    first = meter.reserve("k1", "small", 200, 0.0)
    with pytest.raises(RequestRefused) as refused:
        meter.reserve("k2", "small", 200, 0.0)  # another key of the same team: the team's minute is shared
    assert refused.value.http_status == 429 and refused.value.code == "tokens_per_minute"
    meter.settle(first, 50, 0.0)  # the answer used 50 of the 200 reserved: 150 come back
    meter.reserve("k2", "small", 200, 0.0)
    now[0] += 60  # a minute later the bucket is full again
    meter.reserve("k3", "small", 300, 0.0)


def test_a_request_larger_than_the_whole_limit_is_told_to_ask_for_fewer_tokens() -> None:
    meter, _ = _meter(small=Team(tokens_per_minute=100))
    with pytest.raises(RequestRefused) as refused:
        meter.reserve("k", "small", 101, 0.0)
    assert refused.value.param == "max_tokens" and "fewer max_tokens" in str(refused.value)


def test_a_key_has_its_own_limit_within_its_team() -> None:
    meter, _ = _meter()
    meter.reserve("k", "default", 900, 0.0)
    with pytest.raises(RequestRefused, match="key's limit"):
        meter.reserve("k", "default", 200, 0.0)
    meter.reserve("other", "default", 900, 0.0)


def test_budget_counts_reservations_in_flight_so_concurrent_requests_cannot_overspend() -> None:
    meter, _ = _meter(paid=Team(budget=Budget(usd=1.0, period="day", action="reject")))
    held = [meter.reserve(f"k{i}", "paid", 1, 0.3) for i in range(3)]  # 0.9 of 1.0 in flight, nothing spent yet
    with pytest.raises(RequestRefused) as refused:
        meter.reserve("k9", "paid", 1, 0.3)
    assert refused.value.code == "budget_exceeded" and refused.value.kind == "insufficient_quota"
    for reservation in held:
        meter.settle(reservation, 1, 0.1)  # each cost a third of its ceiling
    assert meter.spend("paid") == (pytest.approx(0.3), 1.0)
    meter.reserve("k9", "paid", 1, 0.3)  # settled: room again


def test_settling_twice_counts_once() -> None:
    meter, _ = _meter(paid=Team(budget=Budget(usd=1.0)))
    reservation = meter.reserve("k", "paid", 10, 0.5)
    meter.settle(reservation, 10, 0.2)
    meter.settle(reservation, 10, 0.2)
    assert meter.spend("paid")[0] == pytest.approx(0.2)


def test_an_alert_budget_answers_past_it_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    meter, _ = _meter(lab=Team(budget=Budget(usd=0.1, action="alert", alert_at=0.5)))
    with caplog.at_level(logging.WARNING, logger="conveyor.serving"):
        for _ in range(3):
            meter.settle(meter.reserve("k", "lab", 1, 0.06), 1, 0.06)
    assert meter.spend("lab")[0] == pytest.approx(0.18)
    messages = [r.getMessage() for r in caplog.records]
    assert any("50%" in m for m in messages) and any("spent all" in m for m in messages)


def test_a_key_of_a_team_that_is_not_in_the_policy_is_refused() -> None:
    meter, _ = _meter()
    assert meter.team_of(None) == "default"
    with pytest.raises(RequestRefused) as refused:
        meter.team_of("gone")
    assert refused.value.http_status == 403 and "gone" in str(refused.value)


def test_the_policy_refuses_a_default_team_it_does_not_define() -> None:
    with pytest.raises(ValueError, match="default_team"):
        GatewayPolicy(teams={"a": Team()}, default_team="b")


def test_a_restarted_gateway_reads_each_team_s_spend_this_period_from_the_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conveyor.registry.inference_log import InferenceLog, LlmLogEntry
    from conveyor.serving.meter import spent_in_log

    def entry(team: str, at: datetime, cost: float) -> LlmLogEntry:
        return LlmLogEntry(
            request_id=f"r-{team}-{at:%d}-{cost}",
            time=at,
            model="m",
            version="1",
            served_by="champion",
            deployment=None,
            release_digest=None,
            prompt_version=None,
            team=team,
            key="k",
            endpoint="chat",
            stream=False,
            prompt_tokens=1,
            completion_tokens=1,
            cost_usd=cost,
            ttft_ms=1.0,
            duration_ms=2.0,
            cached=False,
            status="ok",
            finish_reason="stop",
        )

    with InferenceLog(tmp_path) as log:
        log.record(entry("paid", datetime(2026, 12, 1, 9, tzinfo=UTC), 0.25))
        log.record(entry("paid", datetime(2026, 12, 2, 9, tzinfo=UTC), 0.5))
        log.record(entry("paid", datetime(2026, 11, 30, 9, tzinfo=UTC), 7.0))  # last month
        log.record(entry("daily", datetime(2026, 12, 1, 9, tzinfo=UTC), 3.0))  # yesterday, for a daily budget
    policy = GatewayPolicy(
        teams={
            "default": Team(),
            "paid": Team(budget=Budget(usd=10, period="month")),
            "daily": Team(budget=Budget(usd=10, period="day")),
            "idle": Team(budget=Budget(usd=10)),  # no requests at all
        }
    )
    spent = spent_in_log(tmp_path, policy, share=0.5, at=datetime(2026, 12, 2, 12, tzinfo=UTC))
    assert spent == {("paid", "2026-12"): pytest.approx(0.375), ("daily", "2026-12-02"): 0.0, ("idle", "2026-12"): 0.0}
    assert spent_in_log(tmp_path / "none", policy) == {}
