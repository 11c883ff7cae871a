"""One home for what a breach starts, for every kind of model: a tabular model's retraining and an
LLM release's re-evaluation or rebuild alike.

A check that finds a breach asks ``decide`` (``monitoring.trigger.decide_trigger``: one start per
breach window, a cooldown), and ``record_trigger`` records the start it allows
(``retraining.triggered``, its evidence and the version it judged as inputs: the record's digest
is the trigger's id). The work it starts ``claim``s the trigger once (``retraining.started``: a
trigger delivered twice still acts once), and ends ``completed``, ``skipped`` or ``failed``, each
recorded with the trigger as its input, so lineage leads from the outcome back to its cause.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from conveyor.monitoring.trigger import Breach, PastTrigger, TriggerDecision, decide_trigger
from conveyor.policies.drift import DriftPolicy, Window, parse_window
from conveyor.policies.errors import ConveyorError, NotFound, PolicyInvalid
from conveyor.registry.digests import json_digest
from conveyor.registry.events import EventKind, typed
from conveyor.registry.ledger import Ledger, LedgerEvent
from conveyor.registry.locks import file_lock
from conveyor.registry.workspace import Workspace

__all__ = [
    "Started",
    "TriggerOutcome",
    "claim",
    "completed",
    "decide",
    "failed",
    "moment",
    "past_triggers",
    "record_trigger",
    "skipped",
    "started",
    "version_digest",
    "window_of",
]


@dataclass(frozen=True)
class Started:
    """A start the trigger allowed: its ledger record, and who starts the work (this process, or a
    Prefect deployment's trigger on the server)."""

    trigger: str  # digest of the trigger record
    event: int
    mode: Literal["embedded", "server"]


@dataclass
class TriggerOutcome:
    """What the work a trigger started did: ``completed`` (retrained, rebuilt, or the champion still
    passes), ``rolled_back``, ``held``, ``failed`` or ``skipped``."""

    status: Literal["completed", "rolled_back", "held", "failed", "skipped"]
    trigger: str
    reason: str
    version: str | None = None
    canary: bool = False  # the new version was made the canary
    reasons: list[str] = field(default_factory=list)  # the promotion policy's, or the gate's
    data: str | None = None  # the data file a retraining trained on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- deciding and recording a start ----------------------------------------------------------------


def past_triggers(ledger: Ledger, name: str, causes: tuple[str, ...] | None = None) -> list[PastTrigger]:
    """Triggers recorded for ``name`` (of ``causes`` only, when given), for cooldown and de-duplication;
    one skipped for want of new data does not count."""
    found = []
    for event in ledger.latest([EventKind.RETRAINING_TRIGGERED], limit=500, model=name):
        details = typed(event)
        if causes is not None and details.cause not in causes:
            continue
        if any(c.kind == EventKind.RETRAINING_SKIPPED for c in ledger.consumers(event.outputs[0])):
            continue
        found.append(PastTrigger.from_details(event.time, event.details, event.seq))
    return found


def decide(
    breach: Breach, past: list[PastTrigger], policy: DriftPolicy, now: datetime, *, start: bool, flag: str
) -> TriggerDecision:
    """The trigger's decision; with ``start`` false (the command's ``flag``) a breach is reported but
    nothing is started or recorded."""
    decision = decide_trigger(breach, past, policy, now)
    if decision.start and not start:
        return TriggerDecision(False, f"asked not to {flag}; " + decision.reason)
    return decision


def record_trigger(ws: Workspace, ledger: Ledger, breach: Breach, decision: TriggerDecision) -> LedgerEvent:
    """The ``retraining.triggered`` event of ``breach`` (its record's digest is the trigger's id),
    linked to its evidence and to the version it judged."""
    record = {**breach.record(), "decision": decision.reason}
    return ledger.append(
        EventKind.RETRAINING_TRIGGERED,
        inputs={"evidence": breach.evidence, "version": version_digest(ws, breach.model, breach.version)},
        outputs=[json_digest(record)],
        details=record,
    )


def started(ws: Workspace, event: LedgerEvent) -> Started:
    """Who starts the recorded trigger's work: with a Prefect server, a deployment's trigger; else this process."""
    return Started(event.outputs[0], event.seq, "server" if ws.prefect_api_url else "embedded")


def version_digest(ws: Workspace, name: str, version: str) -> str | None:
    return ws.mlflow().get_model_version(name, version).tags.get("conveyor.version_digest")


# -- the work a trigger starts ---------------------------------------------------------------------


def claim(ws: Workspace, ledger: Ledger, trigger: str, name: str) -> str | None:
    """Record that ``trigger``'s work starts (``retraining.started``), once: the reason it may not,
    when its work already started."""
    if not [e for e in ledger.producers(trigger) if e.kind == EventKind.RETRAINING_TRIGGERED]:
        raise NotFound(
            f"No trigger {trigger} in the ledger.",
            hint="A trigger is recorded by a check that found a breach (`conveyor drift check`, "
            "`conveyor labels add`, `conveyor llm check`).",
        )
    with file_lock(ws.home, f"trigger-{name}"):  # a trigger delivered twice still acts once
        earlier = [e for e in ledger.consumers(trigger) if e.kind == EventKind.RETRAINING_STARTED]
        if earlier:
            return f"this trigger's work already started (ledger event #{earlier[0].seq})"
        ledger.append(EventKind.RETRAINING_STARTED, inputs={"trigger": trigger}, details={"model": name})
    return None


def completed(
    ledger: Ledger, outcome: TriggerOutcome, version_digest: str | None, *, reasons: list[str], data: str
) -> TriggerOutcome:
    """``retraining.completed``: what the work did (``reasons``; ``data``: what it trained on, or what
    it did), linked to its trigger and the version it made (``version_digest``)."""
    ledger.append(
        EventKind.RETRAINING_COMPLETED,
        inputs={"trigger": outcome.trigger, "version": version_digest},
        details={"version": outcome.version or "", "canary": outcome.canary, "reasons": reasons, "data": data},
    )
    return outcome


def skipped(
    ledger: Ledger, trigger: str, reason: str, evidence: dict[str, str | None], *, data: str | None = None
) -> TriggerOutcome:
    """``retraining.skipped``: nothing to act on (the trigger then counts for no cooldown); ``data``:
    the data file it looked at."""
    ledger.append(EventKind.RETRAINING_SKIPPED, inputs={"trigger": trigger, **evidence}, details={"reason": reason})
    return TriggerOutcome("skipped", trigger, reason, data=data)


def failed(ledger: Ledger, trigger: str, error: ConveyorError) -> TriggerOutcome:
    """``retraining.failed``: the work refused, with what was wrong and what to do."""
    ledger.append(
        EventKind.RETRAINING_FAILED, inputs={"trigger": trigger}, details={"error": error.message, "hint": error.hint}
    )
    return TriggerOutcome("failed", trigger, str(error))


# -- windows ---------------------------------------------------------------------------------------


def window_of(text: str) -> Window:
    """A check's window: a row count or a duration."""
    try:
        return parse_window(text)
    except ValueError as exc:
        raise PolicyInvalid(
            f"Bad window: {exc}.", hint="Give a row count (5000) or a duration (30m, 24h, 7d)."
        ) from None


def moment(text: str | None, default: datetime | None = None) -> datetime:
    """A window's bound as the check wrote it (ISO 8601; UTC when it names no zone), else ``default`` (now)."""
    if not text:
        return default or datetime.now(UTC)
    at = datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=UTC)
