"""A served model's faults in the ledger: at most one record a minute per deployment and kind.

A model that fails every request must not write a ledger event per request: the first failure of
a kind is recorded at once, the next ones are counted and the count goes into the next record.
Records are written on a thread of their own, off the request path.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from conveyor.policies.errors import ModelFailed
from conveyor.registry.events import EventKind
from conveyor.registry.workspace import Workspace

__all__ = ["FaultRecorder"]

log = logging.getLogger("conveyor.serving")

_RECORD_SECONDS = 60.0


class FaultRecorder:
    def __init__(self, ws: Workspace, name: str, *, every: float = _RECORD_SECONDS) -> None:
        self.ws, self.name, self.every = ws, name, every
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # (deployment, kind) -> (last record, failures since)
        self._lock = threading.Lock()

    def record(self, deployment: str, version: str, role: str, exc: ModelFailed) -> bool:
        """Count a failure; True when this one is recorded (the first of its kind in ``every`` seconds)."""
        now = time.monotonic()
        with self._lock:
            last, failures = self._seen.get((deployment, exc.kind), (float("-inf"), 0))
            failures += 1
            if now - last < self.every:
                self._seen[(deployment, exc.kind)] = (last, failures)
                return False
            self._seen[(deployment, exc.kind)] = (now, 0)
        details = {
            "name": self.name,
            "version": version,
            "role": role,
            "kind": exc.kind,
            "reason": str(exc)[:500],
            "failures": failures,
        }
        threading.Thread(
            target=self._append, args=({"deployment": deployment}, details), name="record-fault", daemon=True
        ).start()
        return True

    def _append(self, inputs: dict[str, str], details: dict[str, Any]) -> None:
        try:
            with self.ws.ledger() as ledger:
                ledger.append(EventKind.MODEL_FAULT, inputs=inputs, outputs=[], details=details)
        except Exception:
            log.exception("could not record %s", EventKind.MODEL_FAULT)
