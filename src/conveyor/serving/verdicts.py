"""A canary's course changed: by its analysis' verdict, or by an admin.

A verdict is carried out on the worker whose controller reached it.
``rolled_back``: the weight is 0 for every worker already; the ``canary`` alias is removed (a
restart must not bring it back), the figures recorded, the canary stopped. ``promoted``: the last
step was clean; the version is promoted through the promotion policy (which may still refuse it),
served as champion first and then the canary stopped, so no request finds neither.

An admin may move the canary's weight (and hold it there) or abort it, on any worker: the shared
state carries it to the others.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from conveyor.policies.canary import Verdict
from conveyor.policies.errors import RequestRefused
from conveyor.registry.events import EventKind
from conveyor.registry.release import CHAMPION

if TYPE_CHECKING:
    from conveyor.serving.core import ServingCore

__all__ = ["abort", "promoted", "rolled_back", "set_weight"]

log = logging.getLogger("conveyor.serving")


def rolled_back(core: ServingCore[Any], verdict: Verdict) -> None:
    with core.switch:
        version = core.controller.row.version
        canary = core.canary
        if version is None:
            return
        core.metrics.rollbacks.labels(core.name).inc()
        core.metrics.weight.labels(core.name).set(0)
        removed = core.aliases.retire_canary(version)
        # The worker that reached the verdict may not have loaded the canary yet: the registry knows its digest.
        digest = canary.verified.version_digest if canary is not None else core.aliases.digest(version)
        core.ledger.append(
            EventKind.CANARY_ROLLED_BACK,
            inputs={"version": digest} if digest else [],
            outputs=[],
            details={
                "name": core.name,
                "version": version,
                "reasons": verdict.reasons,
                "figures": core.controller.status(),
                "alias_removed": removed,
                "champion": core.champion.verified.version if core.champion else None,
            },
        )
        log.warning("canary %s version %s rolled back: %s", core.name, version, "; ".join(verdict.reasons))
        core.controller.stop()
        core.stop_canary()
        core.publish()  # the champion alone, for every worker


def promoted(core: ServingCore[Any], verdict: Verdict) -> None:
    with core.switch:
        canary = core.canary
        if canary is None:
            return
        version = canary.verified.version
        ok, reasons = core.aliases.promote_canary(version)
        core.ledger.append(
            EventKind.CANARY_COMPLETED,
            inputs={"version": canary.verified.version_digest},
            outputs=[],
            details={
                "name": core.name,
                "version": version,
                "promoted": ok,
                "analysis": verdict.reasons,
                "promotion": reasons,
                "figures": core.controller.status(),
            },
        )
        if ok:
            core.load(CHAMPION, version)  # first: the canary keeps its share until the champion has switched
        core.controller.stop()
        core.stop_canary()
        if not ok:
            log.warning(
                "canary %s version %s cleared every step but was not promoted: %s",
                core.name,
                version,
                "; ".join(reasons),
            )
            core.aliases.retire_canary(version)
        core.publish()


def set_weight(core: ServingCore[Any], weight: float, hold: bool = False) -> None:
    """Move the canary's weight for every worker (any worker may be asked)."""
    if not 0 <= weight <= 100:
        raise RequestRefused(400, f"weight must be between 0 and 100, not {weight}")
    if core.state.canary().state != "running":
        raise RequestRefused(409, "no canary is being served; promote a version to canary first")
    try:
        core.controller.set_weight(weight, hold=hold)
    except ValueError as exc:
        raise RequestRefused(409, str(exc)) from None
    core.metrics.weight.labels(core.name).set(weight / 100)


def abort(core: ServingCore[Any], reason: str) -> None:
    if core.state.canary().state != "running":
        raise RequestRefused(409, "no canary is being served")
    core.controller.abort(f"aborted by an admin: {reason}")
