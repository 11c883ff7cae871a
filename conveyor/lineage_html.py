"""A lineage graph as one self-contained HTML page: no CDN, no network, opens from a file.

The graph travels inside the page as JSON; a small script lays it out in columns (upstream to
the left of the starting point, downstream to the right) and draws it as SVG: events as dark
boxes with their kind, number and time, artifacts as light boxes with what they are and their
digest. Clicking a node highlights what it is connected to; a table below lists every node.
"""

from __future__ import annotations

import html
import json
from typing import Any

from registry.digests import short
from registry.events import EventKind, inputs_by_role
from registry.ledger import LedgerEvent
from registry.lineage import Lineage

__all__ = ["graph_of", "lineage_page"]

# What an event's outputs are, by position (the rest: "artifact").
_MADE = {
    "dataset.versioned": ["dataset"],
    "data.validated": ["validation report"],
    "features.built": ["training set"],
    "model.trained": ["model"],
    "model.evaluated": ["evaluation report"],
    "model.signed": ["signature bundle", "provenance"],
    "model.registered": ["registered version"],
    "model.deployed": ["deployment"],
    "labels.added": ["joined labels"],
    "drift.checked": ["drift report", "drift report (HTML)", "drift snapshot"],
    "retraining.triggered": ["retraining trigger"],
    "model.promoted": ["promotion decision"],
    "model.promotion_refused": ["promotion decision"],
}
# What an event's inputs are, by their role, when no event in the graph made them.
_USED = {
    "suite": "expectation suite",
    "feature_definitions": "feature definitions",
    "config": "project config",
    "cause": "retraining trigger",
    "policy": "promotion policy",
    "window": "inference window",
}


def graph_of(walks: list[Lineage]) -> dict[str, Any]:
    """Nodes (artifacts and events, each once) and edges (artifact -> event -> artifact), with columns."""
    events: dict[int, LedgerEvent] = {}
    column: dict[str, int] = {}
    roots = {d for w in walks for d in w.roots}
    for root in roots:
        column[root] = 0
    for walk in walks:
        sign = -1 if walk.direction == "upstream" else 1
        for event in walk.events:
            events[event.seq] = event
            level = walk.levels[event.seq]
            column.setdefault(f"e{event.seq}", sign * (2 * level - 1))
            for digest in walk.onward(event):
                column.setdefault(digest, sign * 2 * level)
    nodes: list[dict[str, Any]] = []
    labels = _labels(events.values())
    for event in sorted(events.values(), key=lambda e: e.seq):
        for digest in (*event.inputs, *event.outputs):
            column.setdefault(digest, column[f"e{event.seq}"] + (1 if digest in event.outputs else -1))
    made_at = {
        d: e.time for e in sorted(events.values(), key=lambda e: -e.seq) for d in e.outputs
    }  # the first maker's time
    for digest in sorted({d for e in events.values() for d in (*e.inputs, *e.outputs)} | roots):
        kind, name = labels.get(digest, ("input", ""))
        nodes.append(
            {
                "id": digest,
                "type": "artifact",
                "kind": kind,
                "label": name,
                "digest": digest,
                "short": short(digest),
                "column": column[digest],
                "root": digest in roots,
                "time": made_at.get(digest, ""),
            }
        )
    for event in sorted(events.values(), key=lambda e: e.seq):
        nodes.append(
            {
                "id": f"e{event.seq}",
                "type": "event",
                "kind": event.kind,
                "label": f"#{event.seq}",
                "digest": event.hash,
                "short": event.hash[:12],
                "column": column[f"e{event.seq}"],
                "root": False,
                "time": event.time,
                "actor": event.actor,
                "details": event.details,
            }
        )
    edges = [{"from": d, "to": f"e{e.seq}"} for e in events.values() for d in e.inputs]
    edges += [{"from": f"e{e.seq}", "to": d} for e in events.values() for d in e.outputs]
    return {"nodes": nodes, "edges": edges}


def _labels(events: Any) -> dict[str, tuple[str, str]]:
    """(kind, name) of each digest an event made, from the event that made it."""
    found: dict[str, tuple[str, str]] = {}
    for event in events:
        for role, digest in inputs_by_role(event).items():
            if role in _USED:
                found.setdefault(digest, (_USED[role], ""))
    for event in sorted(events, key=lambda e: e.seq):
        names = _MADE.get(event.kind, [])
        files = (
            {digest: name for name, digest in (event.details.get("files") or {}).items()}
            if event.kind == EventKind.MODEL_TRAINED
            else {}
        )
        for i, digest in enumerate(event.outputs):
            kind = names[i] if i < len(names) else ("model file" if digest in files else "artifact")
            found[digest] = (kind, _name(event, kind, files.get(digest, "")))
    return found


def _name(event: LedgerEvent, kind: str, file_name: str) -> str:
    d = event.details
    if kind == "dataset":
        return str(d.get("path", ""))
    if kind in ("registered version", "deployment"):
        return f"{d.get('name')}/{d.get('version')}" + (
            f" as {d['role']}" if kind == "deployment" and d.get("role") else ""
        )
    return file_name


def lineage_page(walks: list[Lineage], title: str, note: str | None = None) -> str:
    """The whole page, ready to write to a file."""
    graph = graph_of(walks)
    data = json.dumps(graph, sort_keys=True).replace("</", "<\\/")
    events = sum(1 for n in graph["nodes"] if n["type"] == "event")
    rows = "\n".join(
        f"<tr><td>{html.escape(n['type'])}</td><td>{html.escape(n['kind'])}</td><td>{html.escape(n['label'])}</td>"
        f"<td><code>{html.escape(n['digest'])}</code></td><td>{html.escape(n['time'])}</td></tr>"
        for n in graph["nodes"]
    )
    return _PAGE.format(
        title=html.escape(title),
        note=html.escape(note or ""),
        data=data,
        rows=rows,
        summary=f"{events} events, {len(graph['nodes']) - events} artifacts",
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>Lineage: {title}</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; color: #1d2330; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }} .note {{ color: #555; margin: 0 0 8px; }}
#canvas {{ border: 1px solid #d5d9e0; overflow: auto; max-height: 75vh; background: #fafbfc; }}
.node rect {{ rx: 6; stroke-width: 1.5; }}
.artifact rect {{ fill: #fff; stroke: #6b7a99; }} .artifact.root rect {{ stroke: #c2410c; stroke-width: 3; }}
.event rect {{ fill: #24324d; stroke: #24324d; }} .event text {{ fill: #fff; }}
.node text {{ font-size: 11px; }} .node .title {{ font-weight: 600; font-size: 12px; }}
.edge {{ fill: none; stroke: #9aa5b8; stroke-width: 1.3; }}
.dim {{ opacity: .2; }} .lit rect {{ stroke: #c2410c; stroke-width: 3; }} .edge.lit {{ stroke: #c2410c; stroke-width: 2.2; }}
table {{ border-collapse: collapse; margin-top: 12px; }} td, th {{ border-bottom: 1px solid #e3e6eb; padding: 3px 8px; text-align: left; }}
code {{ font-size: 11px; }}
</style></head>
<body>
<h1>Lineage: {title}</h1>
<p class="note">{note}</p>
<p id="summary" data-static="{summary}">{summary} (drawing…)</p>
<div id="canvas"></div>
<table><thead><tr><th>node</th><th>kind</th><th>name</th><th>digest / hash</th><th>time</th></tr></thead><tbody>
{rows}
</tbody></table>
<script type="application/json" id="graph">{data}</script>
<script>
(function () {{
  const graph = JSON.parse(document.getElementById("graph").textContent);
  const NS = "http://www.w3.org/2000/svg", W = 230, H = 58, GX = 60, GY = 18;
  const columns = new Map();
  for (const n of graph.nodes) {{
    if (!columns.has(n.column)) columns.set(n.column, []);
    columns.get(n.column).push(n);
  }}
  const order = [...columns.keys()].sort((a, b) => a - b);
  const at = new Map();
  let height = 0;
  order.forEach((c, i) => {{
    const list = columns.get(c).sort((a, b) => (a.time || "").localeCompare(b.time || "") || a.kind.localeCompare(b.kind));
    list.forEach((n, j) => at.set(n.id, {{ x: 20 + i * (W + GX), y: 20 + j * (H + GY), n }}));
    height = Math.max(height, 40 + list.length * (H + GY));
  }});
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", 40 + order.length * (W + GX));
  svg.setAttribute("height", height);
  const el = (name, attrs, parent) => {{
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    parent.appendChild(e);
    return e;
  }};
  const edges = [];
  for (const e of graph.edges) {{
    const a = at.get(e.from), b = at.get(e.to);
    if (!a || !b) continue;
    const [x1, y1, x2, y2] = a.x < b.x ? [a.x + W, a.y + H / 2, b.x, b.y + H / 2] : [a.x, a.y + H / 2, b.x + W, b.y + H / 2];
    const mid = (x1 + x2) / 2;
    const p = el("path", {{ d: `M${{x1}},${{y1}} C${{mid}},${{y1}} ${{mid}},${{y2}} ${{x2}},${{y2}}`, class: "edge" }}, svg);
    edges.push({{ p, from: e.from, to: e.to }});
  }}
  const groups = new Map();
  for (const {{ x, y, n }} of at.values()) {{
    const g = el("g", {{ class: `node ${{n.type}}${{n.root ? " root" : ""}}`, transform: `translate(${{x}},${{y}})`,
                        "data-id": n.id, "data-kind": n.kind, "data-digest": n.digest, "data-time": n.time }}, svg);
    el("rect", {{ width: W, height: H }}, g);
    const lines = n.type === "event" ? [`${{n.kind}}  ${{n.label}}`, n.time.replace("T", " ").slice(0, 19), `by ${{n.actor}}`]
                                     : [n.label ? `${{n.kind}}: ${{n.label}}` : n.kind, n.short, n.time.replace("T", " ").slice(0, 19)];
    lines.forEach((t, i) => {{ const s = el("text", {{ x: 8, y: 17 + i * 15, class: i ? "" : "title" }}, g); s.textContent = t.slice(0, 36); }});
    const tip = el("title", {{}}, g);
    tip.textContent = `${{n.kind}} ${{n.label}}\\n${{n.digest}}` + (n.details ? "\\n" + JSON.stringify(n.details, null, 1) : "");
    groups.set(n.id, g);
    g.addEventListener("click", () => highlight(n.id));
  }}
  function highlight(id) {{
    const near = new Set([id]);
    for (const e of edges) {{ if (e.from === id) near.add(e.to); if (e.to === id) near.add(e.from); }}
    for (const [k, g] of groups) g.classList.toggle("dim", !near.has(k)), g.classList.toggle("lit", k === id);
    for (const e of edges) e.p.classList.toggle("lit", e.from === id || e.to === id);
  }}
  document.getElementById("canvas").appendChild(svg);
  const summary = document.getElementById("summary");
  summary.textContent = summary.dataset.static;
  summary.dataset.drawn = String(groups.size);
}})();
</script>
</body></html>
"""
