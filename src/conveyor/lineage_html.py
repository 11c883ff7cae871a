"""A lineage graph as one self-contained HTML page: no CDN, no network, opens from a file, prints.

The page reads top to bottom and fits the screen's width: the starting point first, then one
collapsible layer per step away from it, upstream ("where it came from") and downstream ("what it
fed"); the first layers open, the far ones closed (all open to print). Each node is a card that
shows everything about it in the page itself: events as dark cards with kind, number, time,
actor, what they used and made (links to those cards) and their recorded details; artifacts as
light cards with what they are, their digest and which events made and used them. A banner gives
the audit verdict, a legend says what the cards are; the graph also travels as JSON for tools.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from conveyor.pipelines.validation_page import clipped
from conveyor.registry.digests import short
from conveyor.registry.events import EventKind, inputs_by_role
from conveyor.registry.ledger import LedgerEvent
from conveyor.registry.lineage import Lineage
from conveyor.registry.pages import Heading, meta_tag

__all__ = ["graph_of", "lineage_page"]

# What an event's outputs are, by position (the rest: named by the event's ``files`` or
# ``documents``, else "record").
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
    "model.rolled_back": ["rollback decision"],
    "model.canary_rolled_back": ["canary decision"],
    "model.canary_completed": ["canary decision"],
    "weights.resolved": ["weights"],
    "prompt.registered": ["prompt"],
    "knowledge.versioned": ["knowledge version"],
    "index.built": ["knowledge index"],
    "release.built": ["release", "release manifest"],
    "release.evaluated": ["evaluation report"],
    "feedback.added": ["feedback set"],
    "feedback.accepted": ["evaluation set"],
}
# The detail that names an event's first output, where it has one.
_NAMED_BY = {
    "data.validated": "report",
    "model.evaluated": "report",
    "release.evaluated": "report",
    "weights.resolved": "file",
    "prompt.registered": "uri",
    "knowledge.versioned": "path",
    "feedback.added": "path",
    "feedback.accepted": "set",
    "labels.added": "path",
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
        files = {
            digest: name
            for key in ("files", "documents")
            if isinstance(event.details.get(key), dict)
            for name, digest in event.details[key].items()
        }
        for i, digest in enumerate(event.outputs):
            if i < len(names):
                kind = names[i]
            elif digest in files:
                kind = "model file" if event.kind == EventKind.MODEL_TRAINED else "file"
            else:
                kind = "record"
            found[digest] = (kind, _name(event, i, kind, files.get(digest, "")))
    return found


def _name(event: LedgerEvent, position: int, kind: str, file_name: str) -> str:
    d = event.details
    if kind == "dataset":
        return str(d.get("path", ""))
    if kind in ("registered version", "deployment"):
        return f"{d.get('name')}/{d.get('version')}" + (
            f" as {d['role']}" if kind == "deployment" and d.get("role") else ""
        )
    if event.kind == EventKind.DRIFT_CHECKED:
        return Path(str(d.get(("report", "html", "snapshot")[position]) or "")).name if position < 3 else ""
    if position == 0 and event.kind in _NAMED_BY:
        value = str(d.get(_NAMED_BY[event.kind]) or "")
        return Path(value).name if value.startswith("/") else value
    if kind in ("promotion decision", "rollback decision", "canary decision") and d.get("version"):
        return f"{d.get('name')}/{d.get('version')}" + (f" to {d['target']}" if d.get("target") else "")
    return file_name


Verdict = tuple[bool, str]  # the audit's verdict: intact or not, and in words


def _page_title(label: str) -> str:
    """``loan-default/3 (loan-default@champion)`` as "loan-default version 3 (loan-default@champion)"."""
    name, slash, rest = label.partition("/")
    number, space, tail = rest.partition(" ")
    return f"{name} version {number}{space}{tail}" if slash and number.isdigit() else label


def lineage_page(
    walks: list[Lineage],
    title: str,
    note: str | None = None,
    verdict: Verdict | None = None,
    *,
    root: Path | None = None,
    model: str = "",
) -> str:
    """The whole page, ready to write to a file; paths under ``root`` (the project) are shown
    relative to it."""
    graph = graph_of(walks)
    nodes = {n["id"]: n for n in graph["nodes"]}
    used: dict[str, list[str]] = {}
    made: dict[str, list[str]] = {}
    for edge in graph["edges"]:
        if nodes[edge["from"]]["type"] == "event":
            made.setdefault(edge["from"], []).append(edge["to"])
        else:
            used.setdefault(edge["to"], []).append(edge["from"])
    layers: dict[int, list[dict[str, Any]]] = {}
    for node in graph["nodes"]:
        step = _layer(node["column"])
        if step == 0 and not node["root"]:  # beside the start: an input of a step down, or made by a step up
            step = 1 if any(nodes[e]["column"] == 1 for e in _used_by(node["id"], used)) else -1
        layers.setdefault(step, []).append(node)
    shown = _Shown(root)
    start = [_card(n, nodes, used, made, shown) for n in _ordered(layers.pop(0, []))]
    up = sorted((k for k in layers if k < 0), reverse=True)
    down = sorted(k for k in layers if k > 0)
    events = sum(1 for n in graph["nodes"] if n["type"] == "event")
    heading = Heading(
        "lineage",
        f"Lineage of {_page_title(title)}",
        verdict[1] if verdict else "not audited for this page",
        ("ok" if verdict[0] else "failed") if verdict else "inconclusive",
        model=model or title.partition("/")[0].partition("@")[0],
        version=_version_of(title),
        reasons=[note] if note else [],
    ).stamped()
    return _PAGE.format(
        meta=meta_tag(heading),
        title=html.escape(_page_title(title)),
        note=f'<p class="note">{html.escape(note)}</p>' if note else "",
        verdict=_verdict(verdict),
        start="\n".join(start),
        upstream=_section("Where it came from", "up", [(-k, layers[k]) for k in up], nodes, used, made, shown),
        downstream=_section("What it fed", "down", [(k, layers[k]) for k in down], nodes, used, made, shown),
        summary=f"{events} events, {len(graph['nodes']) - events} artifacts; "
        f"{len(up)} layers upstream, {len(down)} downstream",
        data=json.dumps(graph, sort_keys=True).replace("</", "<\\/"),
    )


def _version_of(label: str) -> str | None:
    """``loan-default/3 (…)`` -> "3"."""
    _, slash, rest = label.partition("/")
    number = rest.partition(" ")[0]
    return number if slash and number.isdigit() else None


_OPEN_LAYERS = 3  # layers nearer than this are open when the page loads


def _used_by(node_id: str, used: dict[str, list[str]]) -> list[str]:
    """The events that used ``node_id``."""
    return [event for event, inputs in used.items() if node_id in inputs]


def _layer(column: int) -> int:
    """The step a column is from the start: events at odd columns, what they made one further."""
    return 0 if column == 0 else (1 if column > 0 else -1) * ((abs(column) + 1) // 2)


def _ordered(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(nodes, key=lambda n: (n["type"] != "event", n["time"] or "", n["kind"], n["id"]))


def _section(
    heading: str,
    way: str,
    layers: list[tuple[int, list[dict[str, Any]]]],
    nodes: dict[str, Any],
    used: dict[str, list[str]],
    made: dict[str, list[str]],
    shown: _Shown,
) -> str:
    if not layers:
        return ""
    parts = [f'<section class="{way}"><h2>{heading}</h2>']
    for step, members in layers:
        kinds = sorted({n["kind"] for n in members if n["type"] == "event"})
        count = sum(1 for n in members if n["type"] == "event")
        summary = f"{step} step{'s' if step > 1 else ''} {way}: {', '.join(kinds)}"
        summary += f" ({count} event{'s' if count != 1 else ''}, {len(members) - count} artifacts)"
        cards = "\n".join(_card(n, nodes, used, made, shown) for n in _ordered(members))
        opened = " open" if step < _OPEN_LAYERS else ""
        parts.append(
            f'<details class="layer" data-step="{step}"{opened}><summary>{html.escape(summary)}</summary>'
            f'<div class="cards">{cards}</div></details>'
        )
    return "\n".join(parts) + "</section>"


def _anchor(node_id: str) -> str:
    return "n-" + node_id.replace(":", "-")


def _links(ids: list[str], nodes: dict[str, Any]) -> str:
    return ", ".join(
        f'<a href="#{_anchor(i)}">{html.escape(_name_of(nodes[i]))}</a>' for i in sorted(set(ids)) if i in nodes
    )


def _name_of(node: dict[str, Any]) -> str:
    if node["type"] == "event":
        return f"{node['kind']} {node['label']}"
    return f"{node['kind']}{': ' + node['label'] if node['label'] else ''} ({node['short']})"


class _Shown:
    """Recorded values as a reader wants them: paths relative to the project, numbers rounded,
    lists and mappings as plain text, reasons one per line, digest maps by their names."""

    def __init__(self, root: Path | None) -> None:
        self.root = str(root.resolve()) + "/" if root is not None else None

    def __call__(self, key: str, value: Any) -> str:
        if key in ("files", "documents") and isinstance(value, dict):
            return html.escape(f"{len(value)}: " + clipped(", ".join(sorted(value)), 400))
        if key == "reasons" and isinstance(value, list):
            return "<br>".join(html.escape(self.text(v)) for v in value)
        return html.escape(clipped(self.text(value), 400))

    def text(self, value: Any) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, str):
            return value.removeprefix(self.root) if self.root and value.startswith(self.root) else value
        if isinstance(value, dict):
            return "; ".join(f"{k}: {self.text(v)}" for k, v in value.items()) or "none"
        if isinstance(value, list | tuple):
            return ", ".join(self.text(v) for v in value) or "none"
        return "none" if value is None else str(value)


def _card(
    node: dict[str, Any],
    nodes: dict[str, Any],
    used: dict[str, list[str]],
    made: dict[str, list[str]],
    shown: _Shown,
) -> str:
    e = html.escape
    rows: list[tuple[str, str]] = []
    when = (node["time"] or "").replace("T", " ")[:19]
    if node["type"] == "event":
        head = f"{e(node['kind'])} <span class=seq>{e(node['label'])}</span>"
        rows += [("time", e(when) + " UTC"), ("by", e(str(node.get("actor", ""))))]
        rows += [("used", _links(used.get(node["id"], []), nodes))] if used.get(node["id"]) else []
        rows += [("made", _links(made.get(node["id"], []), nodes))] if made.get(node["id"]) else []
        rows += [(e(k.replace("_", " ")), shown(k, v)) for k, v in sorted((node.get("details") or {}).items())]
        rows.append(("hash", f"<code>{e(node['digest'])}</code>"))
    else:
        head = e(node["kind"]) + (f": {e(node['label'])}" if node["label"] else "")
        rows.append(("digest", f"<code>{e(node['digest'])}</code>"))
        rows += [("made", e(when) + " UTC")] if when else []
        makers = [src for src, outs in made.items() if node["id"] in outs]
        users = _used_by(node["id"], used)
        rows += [("made by", _links(makers, nodes))] if makers else []
        rows += [("used by", _links(users, nodes))] if users else []
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    classes = f"card {node['type']}" + (" start" if node["root"] else "")
    return (
        f'<article class="{classes}" id="{_anchor(node["id"])}" data-kind="{e(node["kind"])}">'
        f"<h3>{head}</h3><dl>{body}</dl></article>"
    )


def _verdict(verdict: Verdict | None) -> str:
    if verdict is None:
        return '<p class="verdict unknown">Audit: not run for this page (`conveyor audit` checks the record).</p>'
    ok, words = verdict
    return f'<p class="verdict {"ok" if ok else "failed"}">Audit: {html.escape(words)}</p>'


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
{meta}
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>Lineage of {title}</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; color: #1d2330; max-width: 100%; }}
h1 {{ font-size: 19px; margin: 0 0 4px; }} h2 {{ font-size: 15px; margin: 18px 0 6px; }}
h3 {{ font-size: 12.5px; margin: 0 0 4px; overflow-wrap: anywhere; }} .note {{ color: #555; margin: 0 0 8px; }}
.verdict {{ padding: 6px 10px; border-radius: 6px; font-weight: 600; display: inline-block; }}
.verdict.ok {{ background: #e7f6ec; color: #14532d; }} .verdict.failed {{ background: #fde8e8; color: #7f1d1d; }}
.verdict.unknown {{ background: #f1f3f6; color: #444; font-weight: 400; }}
.legend {{ display: flex; gap: 14px; flex-wrap: wrap; align-items: center; margin: 8px 0; color: #444; }}
.legend span.swatch {{ display: inline-block; width: 14px; height: 14px; border-radius: 3px; vertical-align: middle; margin-right: 4px; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 10px; padding: 6px 0; }}
.card {{ box-sizing: border-box; width: 320px; max-width: 100%; border-radius: 7px; padding: 8px 10px; border: 1.5px solid #6b7a99; background: #fff; }}
.card.event {{ background: #24324d; border-color: #24324d; color: #fff; }} .card.event a {{ color: #bcd3ff; }}
.card.start {{ border: 3px solid #c2410c; }} .card:target {{ outline: 3px solid #c2410c; }}
dl {{ margin: 0; display: grid; grid-template-columns: max-content 1fr; gap: 1px 8px; font-size: 11.5px; }}
dt {{ opacity: .75; }} dd {{ margin: 0; overflow-wrap: anywhere; }} code {{ font-size: 10.5px; }}
details.layer {{ border-top: 1px solid #e3e6eb; padding: 4px 0; }} summary {{ cursor: pointer; font-weight: 600; padding: 3px 0; }}
button {{ font: inherit; margin-right: 6px; }}
@media print {{ button {{ display: none; }} .card {{ break-inside: avoid; }} body {{ margin: 0; }} }}
</style></head>
<body>
<h1>Lineage of {title}</h1>
{note}
{verdict}
<div class="legend"><span><span class="swatch" style="background:#24324d"></span>event: a recorded step (its number in the ledger)</span>
<span><span class="swatch" style="border:1.5px solid #6b7a99"></span>artifact: a file or record, by its digest</span>
<span><span class="swatch" style="border:3px solid #c2410c"></span>where this page starts</span>
<span>links jump to the card they name</span></div>
<p id="summary">{summary} <button id="open-all" type="button">open every layer</button><button id="close-all" type="button">close the far ones</button></p>
<section class="start"><h2>Starting point</h2><div class="cards">{start}</div></section>
{upstream}
{downstream}
<script type="application/json" id="graph">{data}</script>
<script>
(function () {{
  const layers = [...document.querySelectorAll("details.layer")];
  const openAll = () => layers.forEach(d => d.open = true);
  document.getElementById("open-all").addEventListener("click", openAll);
  document.getElementById("close-all").addEventListener("click", () => layers.forEach(d => d.open = Number(d.dataset.step) < 3));
  window.addEventListener("beforeprint", openAll);
  window.addEventListener("hashchange", () => {{
    const card = document.getElementById(location.hash.slice(1));
    const layer = card && card.closest("details");
    if (layer) {{ layer.open = true; card.scrollIntoView(); }}
  }});
  const measure = () => document.body.dataset.fits = String(document.documentElement.scrollWidth <= window.innerWidth);
  measure();
  window.addEventListener("resize", measure);
}})();
</script>
</body></html>
"""
