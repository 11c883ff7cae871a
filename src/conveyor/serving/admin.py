"""A client for a running service's admin endpoints (``/admin/*``), and the canary's record when none runs."""

from __future__ import annotations

from typing import Any

from conveyor.policies.errors import ConveyorError
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger

__all__ = ["admin_call", "canary_history"]
_CANARY_KINDS = {
    EventKind.MODEL_DEPLOYED,
    EventKind.CANARY_ROLLED_BACK,
    EventKind.CANARY_COMPLETED,
    EventKind.MODEL_LOAD_REFUSED,
}


def admin_call(
    method: str, path: str, url: str, token: str | None, body: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The admin endpoint's JSON answer; None when no service answers at ``url``."""
    import httpx

    if not token:
        raise ConveyorError(
            "An admin API key is needed.",
            hint="Pass --token or set CONVEYOR_ADMIN_KEY (`conveyor api-key create NAME --admin`).",
        )
    try:
        response = httpx.request(
            method,
            f"{url.rstrip('/')}/admin/{path}",
            json=body,
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.TransportError:
        return None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ConveyorError(
            f"The service refused: {response.status_code} {detail}.", hint="Check the key and the canary's state."
        )
    return response.json()


def canary_history(ledger: Ledger, name: str, limit: int = 10) -> dict[str, Any]:
    """The last ``limit`` canary events of model ``name`` in the ledger (deployments, verdicts, refusals, canary promotions)."""
    events = []
    for event in ledger.iter_events():
        if event.details.get("name") != name:
            continue
        canary_promotion = event.kind == EventKind.MODEL_PROMOTED and event.details.get("target") == "canary"
        if event.kind in _CANARY_KINDS or canary_promotion:
            summary = (
                "; ".join(event.details.get("reasons") or [])
                or event.details.get("role")
                or event.details.get("reason", "")
            )
            events.append(
                {
                    "seq": event.seq,
                    "time": str(event.time),
                    "kind": event.kind,
                    "version": event.details.get("version"),
                    "summary": summary,
                }
            )
    return {"model": name, "events": events[-limit:]}
