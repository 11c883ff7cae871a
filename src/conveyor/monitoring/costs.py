"""What LLM requests cost, from the inference log: tokens and money by team, release or version.

Every request the gateway settled is a row of the log with its metered tokens (the runtime's
counts, which equal a re-count with the model's tokenizer) and its cost at the answering
release's prices; cached answers and blocked requests are counted and cost nothing. The
report groups them by ``team``, ``model`` (the release's name) or ``version``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from conveyor.policies.errors import ConfigInvalid

__all__ = ["CostReport", "cost_report", "parse_since"]

By = Literal["team", "model", "version"]
_AGO = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str | None, *, now: datetime | None = None) -> datetime | None:
    """``30m``, ``24h``, ``7d``, ``2w`` ago, or an ISO date or time (UTC unless it says otherwise)."""
    if text is None:
        return None
    now = now or datetime.now(UTC)
    if found := _AGO.match(text.strip()):
        return now - timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigInvalid(
            f"--since {text!r} is neither a duration nor a date.",
            hint="Give e.g. 24h, 7d or 2w (ago), or a date such as 2026-12-01 or 2026-12-01T09:00.",
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class CostReport:
    by: str
    since: datetime | None
    rows: list[dict[str, Any]]  # one per group: requests, tokens in and out, cost, cached, blocked
    total: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "since": self.since.isoformat() if self.since else None,
            "rows": self.rows,
            "total": self.total,
        }


def cost_report(inference: Path, *, by: By = "team", since: datetime | None = None) -> CostReport:
    """Tokens and cost per ``by`` over every LLM request logged under ``inference`` (one folder per model)."""
    import pandas as pd

    # here: pandas only when the log is read
    from conveyor.registry.inference_log import read_log

    frames = [read_log(folder, since=since) for folder in sorted(inference.glob("*")) if folder.is_dir()]
    frames = [f for f in frames if "kind" in f and not f.empty]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not rows.empty:
        rows = rows[rows["kind"] == "llm"]
    if rows.empty:
        empty = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "cached": 0, "blocked": 0}
        return CostReport(by, since, [], empty)
    key = {"team": ["team"], "model": ["model"], "version": ["model", "version"]}[by]

    def totals(group: pd.DataFrame) -> dict[str, Any]:
        tokens = int(group["prompt_tokens"].sum()) + int(group["completion_tokens"].sum())
        cost = float(group["cost_usd"].sum())
        return {
            "requests": len(group),
            "prompt_tokens": int(group["prompt_tokens"].sum()),
            "completion_tokens": int(group["completion_tokens"].sum()),
            "cost_usd": round(cost, 8),
            "usd_per_1k_tokens": round(cost / tokens * 1000, 8) if tokens else 0.0,
            "cached": int(group["cached"].astype(bool).sum()),
            "blocked": int((group["status"] == "blocked").sum()),
        }

    grouped = []
    for values, group in rows.groupby(key, sort=True):
        names = values if isinstance(values, tuple) else (values,)
        grouped.append(dict(zip(key, map(str, names), strict=True)) | totals(group))
    grouped.sort(key=lambda r: -r["cost_usd"])
    return CostReport(by, since, grouped, totals(rows))
