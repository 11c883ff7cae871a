"""One encoding of every check's verdict, tabular and LLM alike, for metrics, alerts and dashboards.

A check's ledger record says its status in words; a metric needs a number, and an alert a value
that means "breach" whatever the check. Every verdict series uses these values:

    -1  never checked
     0  ok (no drift, quality within its bound, feedback within its share)
     1  breach (drift, quality below its bound, too much negative feedback): alerts fire on 1
     2  not enough data for a verdict
     3  undefined (the labels cannot define the metric: one class only, say)
"""

from __future__ import annotations

from typing import Literal

__all__ = ["BREACH", "INSUFFICIENT", "NEVER", "OK", "UNDEFINED", "VERDICT_NAMES", "verdict_code"]

NEVER, OK, BREACH, INSUFFICIENT, UNDEFINED = -1, 0, 1, 2, 3
VERDICT_NAMES = {
    NEVER: "never checked",
    OK: "ok",
    BREACH: "breach",
    INSUFFICIENT: "not enough data",
    UNDEFINED: "undefined",
}

# drift.checked statuses (tabular and LLM) as the drift series reads them: an LLM check whose
# breach is its feedback ("quality") found no drift; its quality record carries the breach.
_DRIFT = {"no_drift": OK, "ok": OK, "quality": OK, "drift": BREACH, "insufficient": INSUFFICIENT}
# quality.checked statuses (labels, or an LLM release's feedback)
_QUALITY = {"ok": OK, "breach": BREACH, "not_enough_data": INSUFFICIENT, "undefined": UNDEFINED}


def verdict_code(check: Literal["drift", "quality"], status: str | None) -> int:
    """The number a ``check``'s recorded ``status`` is exported as (``NEVER`` for no record).
    A status this module does not know is a bug in whoever recorded it: ``ValueError``."""
    if status is None:
        return NEVER
    codes = _DRIFT if check == "drift" else _QUALITY
    if status not in codes:
        raise ValueError(f"unknown {check} status {status!r}: add it to registry/verdicts.py")
    return codes[status]
