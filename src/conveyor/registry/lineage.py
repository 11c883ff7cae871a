"""Lineage queries: walk the ledger's graph up (where did this come from) or down (what did it feed).

The graph is bipartite: digests are artifacts, events are the arrows between them. Upstream
of a digest are the events that output it, then their inputs, then the events that output
those, and so on; downstream is the mirror image. Each level costs one indexed query, so a
walk costs its depth in round trips, not the size of the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from conveyor.registry.digests import file_digest
from conveyor.registry.events import EventKind, typed
from conveyor.registry.ledger import Ledger, LedgerEvent

__all__ = ["Direction", "Lineage", "downstream", "training_set", "upstream", "walk"]

Direction = Literal["upstream", "downstream"]


@dataclass(frozen=True)
class Lineage:
    """The part of the ledger's graph reachable from ``roots`` in one direction."""

    roots: tuple[str, ...]
    direction: Direction
    events: tuple[LedgerEvent, ...]
    levels: dict[int, int] = field(default_factory=dict)  # event seq -> distance from root
    truncated: bool = False  # the depth limit stopped the walk before the graph ended

    def adjacent(self, digest: str) -> list[LedgerEvent]:
        """Events one step from ``digest``: its producers upstream, its consumers downstream."""
        if self.direction == "upstream":
            return [e for e in self.events if digest in e.outputs]
        return [e for e in self.events if digest in e.inputs]

    def onward(self, event: LedgerEvent) -> tuple[str, ...]:
        """The digests the walk continues to from ``event``."""
        return event.inputs if self.direction == "upstream" else event.outputs

    def to_dict(self) -> dict[str, Any]:
        return {
            "roots": list(self.roots),
            "direction": self.direction,
            "truncated": self.truncated,
            "events": [{**e.to_dict(), "level": self.levels[e.seq]} for e in self.events],
        }


def walk(ledger: Ledger, roots: str | Iterable[str], direction: Direction, depth: int | None = None) -> Lineage:
    """Breadth-first walk from ``roots``; ``depth`` counts events along a path (None: no limit)."""
    roots = (roots,) if isinstance(roots, str) else tuple(dict.fromkeys(roots))
    with ledger.reading():  # one connection, one snapshot, however deep the walk
        return _walk(ledger, roots, direction, depth)


def _walk(ledger: Ledger, roots: tuple[str, ...], direction: Direction, depth: int | None) -> Lineage:
    upstream_walk = direction == "upstream"
    role = "out" if upstream_walk else "in"
    frontier, seen_digests = set(roots), set(roots)
    found: dict[int, LedgerEvent] = {}
    levels: dict[int, int] = {}
    level = 0
    while frontier and (depth is None or level < depth):
        level += 1
        hits = ledger.seqs_linked(frontier, role)
        candidates = {seq for seqs in hits.values() for seq in seqs} - found.keys()
        next_frontier: set[str] = set()
        for event in ledger.get_many(candidates):
            touching = event.outputs if upstream_walk else event.inputs
            if frontier.isdisjoint(touching):
                continue  # the index pointed at an event that does not name this digest
            found[event.seq] = event
            levels[event.seq] = level
            onward = event.inputs if upstream_walk else event.outputs
            next_frontier.update(d for d in onward if d not in seen_digests)
        seen_digests |= next_frontier
        frontier = next_frontier
    truncated = bool(frontier) and bool(ledger.seqs_linked(frontier, role))
    ordered = sorted(found.values(), key=lambda e: (levels[e.seq], e.seq))
    return Lineage(roots, direction, tuple(ordered), levels, truncated)


def upstream(ledger: Ledger, digest: str | Iterable[str], depth: int | None = None) -> Lineage:
    """Where ``digest`` came from: every event and artifact it was made of, transitively."""
    return walk(ledger, digest, "upstream", depth)


def downstream(ledger: Ledger, digest: str | Iterable[str], depth: int | None = None) -> Lineage:
    """What ``digest`` fed: every event and artifact made from it, transitively."""
    return walk(ledger, digest, "downstream", depth)


def training_set(ledger: Ledger, digest: str | None) -> Path | None:
    """The training set file with content ``digest``, as ``features.built`` recorded it; None when the
    ledger does not know it, or the file is gone or no longer hashes to ``digest``."""
    built = [e for e in ledger.producers(digest) if e.kind == EventKind.FEATURES_BUILT] if digest else []
    path = Path(typed(built[-1]).training_set) if built else None
    return path if path is not None and path.is_file() and file_digest(path) == digest else None
