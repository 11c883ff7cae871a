"""Plain-text views of lineage for the terminal."""

from __future__ import annotations

from typing import Any

from registry.digests import short
from registry.ledger import LedgerEvent
from registry.lineage import Lineage

__all__ = ["event_line", "lineage_text"]

_TITLES = {"upstream": "Where it came from", "downstream": "What it fed"}


def event_line(event: LedgerEvent) -> str:
    """One event on one line: number, kind, time, actor and its simple details."""
    return f"#{event.seq} {event.kind}  {event.time}  by {event.actor}{_details(event.details)}"


def lineage_text(walk: Lineage, label: str | None = None) -> list[str]:
    """A tree from the root digests through events to the digests beyond, each event shown once."""
    lines = [f"{_TITLES[walk.direction]} ({walk.direction}):"]
    shown: set[int] = set()

    def branch(digest: str, indent: str) -> None:
        events = walk.adjacent(digest)
        for i, event in enumerate(events):
            last = i == len(events) - 1
            lines.append(f"{indent}{'└─' if last else '├─'} {event_line(event)}")
            child_indent = indent + ("   " if last else "│  ")
            if event.seq in shown:
                lines.append(f"{child_indent}(shown above)")
                continue
            shown.add(event.seq)
            onward = walk.onward(event)
            for j, next_digest in enumerate(onward):
                tail = j == len(onward) - 1
                lines.append(f"{child_indent}{'└─' if tail else '├─'} {short(next_digest)}")
                branch(next_digest, child_indent + ("   " if tail else "│  "))

    for root in walk.roots:
        lines.append(f"  {label}  {short(root)}" if label and len(walk.roots) == 1 else f"  {root}")
        branch(root, "  ")
    if not walk.events:
        lines.append("  (nothing recorded)")
    if walk.truncated:
        lines.append("  … more beyond --depth")
    return lines


def _details(details: dict[str, Any]) -> str:
    simple = [f"{k}={v}" for k, v in details.items() if isinstance(v, str | int | float | bool)]
    return ("  " + " ".join(simple))[:160] if simple else ""
