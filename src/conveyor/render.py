"""Plain-text views of lineage and audits, for the terminal and the lineage page."""

from __future__ import annotations

from typing import Any

from conveyor.registry.digests import short
from conveyor.registry.ledger import LedgerEvent
from conveyor.registry.lineage import Lineage

__all__ = ["audit_verdict", "event_line", "lineage_text"]

_TITLES = {"upstream": "Where it came from", "downstream": "What it fed"}


def audit_verdict(report: Any) -> tuple[bool, str]:
    """A version's audit (``AuditReport``) in words: how many links held, and which did not."""
    failed = [link.name for link in report.links if not link.ok]
    v = report.verification
    words = f"{len(report.links) - len(failed)} of {len(report.links)} links of {v.name} version {v.version} verified"
    return report.ok, words + (f"; FAILED: {', '.join(failed)}" if failed else "")


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
