"""The retraining trigger: may this breach start a retraining? A pure decision, with its reason.

A breach (drift, or quality below the floor) names the champion it was measured against and the
window of traffic it saw. It starts a retraining unless one was already started for an
overlapping window of the same champion (one retraining per breach window, whichever check saw
it first), or a retraining against the same champion started within the policy's cooldown. A new
champion starts with no cooldown: it was trained on newer data, and its own drift is news.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from conveyor.policies.drift import DriftPolicy

__all__ = ["RETRAINING_EVENT", "Breach", "PastTrigger", "TriggerDecision", "decide_trigger"]

RETRAINING_EVENT = "conveyor.retraining.requested"  # the Prefect event that starts it on a server


@dataclass(frozen=True)
class Breach:
    cause: Literal["drift", "quality", "knowledge"]
    model: str
    version: str  # the champion it was measured against
    since: datetime
    until: datetime
    evidence: str  # digest of the report that shows it
    reason: str

    def record(self) -> dict[str, Any]:
        return {
            "cause": self.cause,
            "model": self.model,
            "champion": self.version,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "evidence": self.evidence,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PastTrigger:
    """A retraining already started (from a ``retraining.triggered`` ledger event)."""

    at: datetime
    version: str
    since: datetime
    until: datetime
    event: int

    @classmethod
    def from_details(cls, at: str, details: dict[str, Any], event: int) -> PastTrigger:
        return cls(
            datetime.fromisoformat(at),
            details["champion"],
            datetime.fromisoformat(details["since"]),
            datetime.fromisoformat(details["until"]),
            event,
        )


@dataclass(frozen=True)
class TriggerDecision:
    start: bool
    reason: str


def decide_trigger(breach: Breach, past: list[PastTrigger], policy: DriftPolicy, now: datetime) -> TriggerDecision:
    """Start a retraining for ``breach`` unless it repeats one already started or the cooldown holds."""
    for earlier in past:
        if earlier.version == breach.version and earlier.since <= breach.until and breach.since <= earlier.until:
            return TriggerDecision(
                False,
                f"a retraining was already started for this window of version "
                f"{breach.version} (ledger event #{earlier.event}, {earlier.at:%Y-%m-%d %H:%M:%S} UTC)",
            )
    cooldown = timedelta(minutes=policy.retraining.cooldown_minutes)
    recent = [p for p in past if p.version == breach.version and now - p.at < cooldown]
    if recent:
        latest = max(recent, key=lambda p: p.at)
        left = cooldown - (now - latest.at)
        return TriggerDecision(
            False,
            f"cooldown: a retraining started at {latest.at:%Y-%m-%d %H:%M:%S} UTC "
            f"(event #{latest.event}); the next may start in {_minutes(left)}",
        )
    return TriggerDecision(True, f"{breach.cause} breach on version {breach.version}: {breach.reason}")


def _minutes(delta: timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:.0f} min" if minutes >= 1 else f"{delta.total_seconds():.0f} s"
