"""The demo's claims, checked against the record: every outcome the demo prints (registered,
promoted, made the canary, promoted or rolled back by the canary analysis, N of N links verified,
sealed at event #N, which version is champion) is noted here as it is printed, for that model and
that version, and read back from the registry and the ledger at the end. The demo's last line says
whether the record agrees; ``check`` raises ``RecordDisagrees`` (exit 1) when it does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.policies.errors import ConveyorError
from conveyor.registry.events import EventKind

if TYPE_CHECKING:
    from conveyor.api import Workspace
    from conveyor.registry.ledger import Ledger, LedgerEvent
    from conveyor.registry.workspace import Workspace as Stores

__all__ = ["DemoRecord", "RecordDisagrees"]


class RecordDisagrees(ConveyorError):
    """The demo printed an outcome that the registry or the ledger does not hold."""

    exit_code = 1


@dataclass(frozen=True)
class _Event:
    said: str  # the outcome as the demo printed it
    kind: str
    name: str
    version: str
    details: dict[str, Any]  # detail values the event must have


@dataclass(frozen=True)
class _Audit:
    said: str
    ref: str  # NAME@ALIAS
    version: str  # the version the audit walked
    verified: int
    links: int


@dataclass
class DemoRecord:
    """What this run of the demo said, to be read back from the record; ``since`` is the ledger's
    last event before the demo began, so an earlier run's events back none of this run's claims."""

    since: int
    events: list[_Event] = field(default_factory=list)
    audits: list[_Audit] = field(default_factory=list)
    champions: dict[str, str] = field(default_factory=dict)  # the champion the demo believes each model has
    seal: int | None = None

    @classmethod
    def start(cls, stores: Stores) -> DemoRecord:
        with stores.ledger() as ledger:
            return cls(since=ledger.count())

    def registered(self, name: str, version: str) -> None:
        self.events.append(_Event(f"{name} v{version} registered", EventKind.MODEL_REGISTERED, name, version, {}))

    def promoted(self, name: str, version: str, target: str, ok: bool) -> None:
        verb = "promoted" if ok else "refused"
        self.events.append(
            _Event(
                f"{name} v{version} {verb} to {target}",
                EventKind.MODEL_PROMOTED if ok else EventKind.MODEL_PROMOTION_REFUSED,
                name,
                version,
                {"target": target},
            )
        )
        if ok and target == "champion":
            self.champions[name] = version

    def canary(self, name: str, version: str, outcome: str) -> None:
        """``outcome``: promoted | not promoted | rolled back (as ``canary_verdict`` names it)."""
        if outcome == "rolled back":
            self.events.append(
                _Event(f"{name} v{version} canary rolled back", EventKind.CANARY_ROLLED_BACK, name, version, {})
            )
            return
        promoted = outcome == "promoted"
        self.events.append(
            _Event(
                f"{name} v{version} canary {outcome}",
                EventKind.CANARY_COMPLETED,
                name,
                version,
                {"promoted": promoted},
            )
        )
        if promoted:
            self.champions[name] = version

    def audited(self, ref: str, report: Any) -> None:
        """An audit (``AuditReport``) of ``ref`` as the demo printed it."""
        version, links = str(report.verification.version), len(report.links)
        verified = sum(1 for link in report.links if link.ok)
        self.audits.append(
            _Audit(f"{ref}: {verified} of {links} links of version {version} verified", ref, version, verified, links)
        )

    def sealed(self, seq: int) -> None:
        self.seal = seq

    def check(self, ws: Workspace) -> str:
        """The one line that says the record agrees; raises ``RecordDisagrees`` naming each claim
        the registry or the ledger does not hold."""
        problems: list[str] = []
        with ws.stores.ledger() as ledger:
            for claim in self.events:
                if _backing(ledger, claim, self.since) is None:
                    problems.append(f"{claim.said}: the ledger has no {claim.kind} for it since event #{self.since}")
            if self.seal is not None:
                seals = ledger.seals(limit=1)
                if not seals or seals[0][1] != self.seal:
                    newest = f"event #{seals[0][1]}" if seals else "no seal"
                    problems.append(f"ledger sealed at event #{self.seal}: the newest seal is at {newest}")
        client = ws.stores.mlflow()
        for name, version in sorted(self.champions.items()):
            holds = _alias(client, name, "champion")
            if holds != version:
                problems.append(f"{name} champion v{version}: the registry's champion is {holds or 'nobody'}")
        for audit in self.audits:
            again = ws.audit(audit.ref)
            version, links = str(again.verification.version), len(again.links)
            verified = sum(1 for link in again.links if link.ok)
            if (version, verified, links) != (audit.version, audit.verified, audit.links):
                problems.append(
                    f"{audit.said}: audited again, {verified} of {links} links of version {version} verified"
                )
        if problems:
            raise RecordDisagrees(
                "The demo printed outcomes the record does not hold: " + "; ".join(problems) + ".",
                hint="A bug in the demo or in what it reads: `conveyor status NAME` and `conveyor lineage` show the record.",
            )
        champions = ", ".join(f"{name} v{version}" for name, version in sorted(self.champions.items()))
        return (
            f"The record agrees: {len(self.events) + len(self.audits) + (self.seal is not None)} outcomes read back "
            f"from the registry and the ledger (champions: {champions or 'none'})."
        )


def _backing(ledger: Ledger, claim: _Event, since: int) -> LedgerEvent | None:
    for event in ledger.latest([claim.kind], limit=10_000, model=claim.name):
        if event.seq <= since:
            return None
        d = event.details
        if str(d.get("version")) != claim.version:
            continue
        if all(d.get(key) == value for key, value in claim.details.items()):
            return event
    return None


def _alias(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
