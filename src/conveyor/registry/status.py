"""What a model's record says now (``conveyor status``): its versions and aliases, who serves which
version, the canary and its last verdict, the last drift and quality checks, the last seal; each
fact with the ledger event it comes from, so a user can go on with ``conveyor lineage event:N``."""

from __future__ import annotations

from typing import Any

from conveyor.policies.errors import RegistryError
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger, LedgerEvent
from conveyor.registry.registration import reconcile
from conveyor.registry.verify import what_registry_has
from conveyor.registry.workspace import Workspace

__all__ = ["model_status"]

_SCAN = 500  # deployments of the model looked at, newest first


def model_status(ws: Workspace, name: str) -> dict[str, Any]:
    """The status of ``name``: a plain dict (what ``--json`` prints)."""
    from mlflow.exceptions import MlflowException

    client = ws.mlflow()
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"The registry has no model {name}.", hint=what_registry_has(client, name)) from None
    with ws.ledger() as ledger:
        unfinished = reconcile(client, ledger, ws.home, name)
    if unfinished:  # its aliases may have moved
        registered = client.get_registered_model(name)
    aliases = {alias: str(version) for alias, version in sorted(registered.aliases.items())}
    versions = []
    for v in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)):
        versions.append(
            {
                "version": str(v.version),
                "aliases": [a for a, to in aliases.items() if to == str(v.version)],
                "registered": _iso(v.creation_timestamp),
                "kind": v.tags.get("conveyor.kind", "model"),
                "digest": v.tags.get("conveyor.version_digest"),
                **({"unfinished": unfinished[str(v.version)]} if str(v.version) in unfinished else {}),
            }
        )
    with ws.ledger() as ledger:
        deployed: dict[str, Any] = {}
        for event in ledger.latest([EventKind.MODEL_DEPLOYED], limit=_SCAN, model=name):
            if event.details.get("role") not in deployed:
                deployed[event.details["role"]] = {"version": event.details.get("version"), **_cite(event)}
        verdict = _last(ledger, [EventKind.CANARY_COMPLETED, EventKind.CANARY_ROLLED_BACK], name)
        drift = _last(ledger, [EventKind.DRIFT_CHECKED], name)
        quality = _last(ledger, [EventKind.QUALITY_CHECKED], name)
        seals = ledger.seals(limit=1)
        events = ledger.count()
    return {
        "model": name,
        "versions": versions,
        "aliases": aliases,
        "last_deployed": dict(sorted(deployed.items())),  # per role, by the services that loaded it
        "canary": {
            "version": aliases.get("canary"),
            "last_verdict": _verdict(verdict) if verdict is not None else None,
        },
        "drift": _check(drift) if drift is not None else None,
        "quality": _check(quality) if quality is not None else None,
        "ledger": {
            "events": events,
            "sealed_at": seals[0][1] if seals else None,
            "unsealed": events - seals[0][1] if seals else events,
        },
    }


def _last(ledger: Ledger, kinds: list[str], name: str) -> LedgerEvent | None:
    return next(iter(ledger.latest(kinds, limit=1, model=name)), None)


def _cite(event: LedgerEvent) -> dict[str, Any]:
    return {"at": event.time, "event": event.seq}


def _verdict(event: LedgerEvent) -> dict[str, Any]:
    d = event.details
    if event.kind == EventKind.CANARY_ROLLED_BACK:
        outcome, reasons = "rolled back", d.get("reasons", [])
    else:
        outcome = "promoted" if d.get("promoted") else "cleared, not promoted"
        reasons = d.get("analysis", []) if d.get("promoted") else d.get("promotion", [])
    return {"version": d.get("version"), "outcome": outcome, "reasons": reasons, **_cite(event)}


def _check(event: LedgerEvent) -> dict[str, Any]:
    d = event.details
    return {"version": d.get("version"), "status": d.get("status"), "trigger": d.get("trigger"), **_cite(event)}


def _iso(milliseconds: int | None) -> str | None:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds") if milliseconds else None
