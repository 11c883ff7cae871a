"""The pages Conveyor writes under ``reports/``: each opens with its verdict in words, and one index
lists them all, newest first.

Every page (validation, evaluation, drift, LLM traffic, lineage) starts with the same heading: what
was checked (model, version, window), the verdict, its reasons, the sample sizes and what the check
caused (a retraining, a re-evaluation). The heading also travels in the page's head as one
``<meta name="conveyor-page">`` tag, so ``reports/index.html`` is rebuilt from the pages themselves
(a page written by hand, or by a newer Conveyor, is listed as it says it is). Pages load nothing
from the network: styles are inline, images are data, and our own pages carry a content security
policy that forbids any fetch.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

__all__ = [
    "Heading",
    "heading_html",
    "inject_heading",
    "meta_tag",
    "publish",
    "read_heading",
    "self_contained",
    "table",
    "write_index",
]

Status = Literal["ok", "breach", "failed", "inconclusive"]  # the heading's colour: green, red, red, grey
_META = "conveyor-page"
_META_REASONS = 12  # reasons the meta tag carries (the index shows them joined)
_HEAD_BYTES = 32_768  # the heading lies in a page's first bytes (Evidently's pages are megabytes: not read whole)


@dataclass(frozen=True)
class Heading:
    """What a page says first."""

    kind: str  # "validation", "evaluation", "drift", "LLM traffic", "lineage"
    title: str
    verdict: str  # in words: "drift", "no drift", "quality breach", "passed", "FAILED", ...
    status: Status
    model: str = ""
    version: str | None = None
    window: str | None = None
    reasons: list[str] = field(default_factory=list)
    samples: list[tuple[str, str]] = field(default_factory=list)  # ("reference", "28 answers")
    caused: str | None = None  # "started a retraining (…)", "nothing: …"
    time: str = ""  # ISO, UTC; now when empty

    def stamped(self) -> Heading:
        return self if self.time else Heading(**{**asdict(self), "time": datetime.now(UTC).isoformat()})


def heading_html(heading: Heading) -> str:
    """The heading block (self-styled, so it reads the same inside a page that is not ours)."""
    e = html.escape
    facts = [("model", heading.model), ("version", heading.version or ""), ("window", heading.window or "")]
    facts += [(name, size) for name, size in heading.samples]
    facts.append(("when", heading.time.replace("T", " ")[:19] + " UTC" if heading.time else ""))
    rows = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts if v)
    reasons = "".join(f"<li>{e(r)}</li>" for r in heading.reasons)
    colours = {
        "ok": ("#e7f6ec", "#14532d"),
        "breach": ("#fde8e8", "#7f1d1d"),
        "failed": ("#fde8e8", "#7f1d1d"),
        "inconclusive": ("#f1f3f6", "#333"),
    }
    background, ink = colours[heading.status]
    return (
        f'<section id="conveyor-verdict" data-status="{heading.status}" '
        'style="font:13px system-ui,sans-serif;margin:12px 16px;padding:10px 14px;border:1px solid #d5d9e0;'
        'border-radius:8px;background:#fff;color:#1d2330">'
        f'<h1 style="font-size:19px;margin:0 0 8px">{e(heading.title)}</h1>'
        f'<p class="verdict" style="display:inline-block;margin:0 0 8px;padding:5px 10px;border-radius:6px;'
        f'font-weight:600;background:{background};color:{ink}">{e(heading.kind[:1].upper() + heading.kind[1:])}: '
        f"{e(heading.verdict)}</p>"
        + (f'<ul class="reasons" style="margin:0 0 8px 18px;padding:0">{reasons}</ul>' if reasons else "")
        + (
            f'<p class="caused" style="margin:0 0 8px"><b>What it caused:</b> {e(heading.caused)}</p>'
            if heading.caused
            else ""
        )
        + '<dl style="display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;margin:0">'
        f"{rows}</dl></section>"
    )


def meta_tag(heading: Heading) -> str:
    """The head's tag that carries ``heading`` for the index (its reasons cut to what the index
    reads of a page: the page itself shows them all)."""
    fields = asdict(heading)
    if len(fields["reasons"]) > _META_REASONS:
        shown = fields["reasons"][:_META_REASONS]
        fields["reasons"] = [*shown, f"and {len(heading.reasons) - len(shown)} more (on the page)"]
    fields["reasons"] = [r[:500] for r in fields["reasons"]]
    return f'<meta name="{_META}" content="{html.escape(json.dumps(fields, sort_keys=True))}">'


_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'unsafe-inline'"


def self_contained(heading: Heading, body: str, *, style: str = "") -> str:
    """A whole page of ours: the heading, then ``body``; inline styles, no fetch allowed."""
    heading = heading.stamped()
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"{meta_tag(heading)}\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        f"<title>{html.escape(heading.title)}</title>\n<style>{_STYLE}{style}</style></head>\n"
        f"<body>\n{heading_html(heading)}\n{body}\n</body></html>\n"
    )


def publish(path: Path, page: str, reports: Path | None) -> Path:
    """Write ``page`` to ``path`` whole (a reader never sees half of it) and, given the reports
    folder, rebuild its index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(path)
    if reports is not None:
        write_index(reports)
    return path


def inject_heading(path: Path, heading: Heading, extra: str = "") -> None:
    """Put ``heading`` at the top of a page written by another tool (Evidently's): its title, the
    meta tag the index reads, and the heading block as the body's first child. A heading injected
    before is replaced, so a check can say later what it caused. ``extra``: HTML shown below it."""
    heading = heading.stamped()
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"<!--conveyor-head-->.*?<!--/conveyor-head-->", "", text, count=1, flags=re.S)
    text = re.sub(r"<!--conveyor-body-->.*?<!--/conveyor-body-->", "", text, count=1, flags=re.S)
    head = f"<!--conveyor-head-->{meta_tag(heading)}<title>{html.escape(heading.title)}</title><!--/conveyor-head-->"
    text = re.sub(r"<head>", lambda _: "<head>" + head, text, count=1, flags=re.I)
    text = re.sub(
        r"<body([^>]*)>",
        lambda m: f"<body{m.group(1)}><!--conveyor-body-->{heading_html(heading)}{extra}<!--/conveyor-body-->",
        text,
        count=1,
        flags=re.I,
    )
    publish(path, text, None)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain table of text cells (escaped here), self-styled like the heading above it."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        "<table style='border-collapse:collapse;margin:0 16px 12px;font:12px system-ui,sans-serif' border='1' "
        f"cellpadding='4'><tr>{head}</tr>{body}</table>"
    )


def read_heading(path: Path) -> Heading | None:
    """The heading a page carries in its head (None: not a page of ours, or an unreadable one)."""
    try:
        with path.open("rb") as handle:
            start = handle.read(_HEAD_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    found = re.search(rf'<meta name="{_META}" content="([^"]*)">', start)
    if found is None:
        return None
    try:
        fields = json.loads(html.unescape(found.group(1)))
        fields["samples"] = [tuple(s) for s in fields.get("samples") or []]
        return Heading(**fields)
    except (TypeError, ValueError):
        return None


def write_index(reports: Path) -> Path:
    """``reports/index.html``: every page under ``reports`` (but itself), newest first, each with
    its kind, model, version, verdict and time, linked by its relative path."""
    entries = []
    for page in reports.rglob("*.html"):
        if (page.name == "index.html" and page.parent == reports) or page.name.startswith("."):
            continue
        heading = read_heading(page)
        relative = page.relative_to(reports).as_posix()
        if heading is None:
            when = datetime.fromtimestamp(page.stat().st_mtime, UTC).isoformat()
            heading = Heading("page", relative, "no verdict recorded", "inconclusive", time=when)
        entries.append((heading.time, relative, heading))
    entries.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
    e = html.escape
    rows = "\n".join(
        f'<tr class="{h.status}"><td>{e(h.time.replace("T", " ")[:19])}</td><td>{e(h.kind)}</td>'
        f"<td>{e(h.model)}</td><td>{e(h.version or '')}</td>"
        f'<td class="v">{e(h.verdict)}</td><td><a href="{e(rel)}">{e(h.title)}</a>'
        + (f'<div class="why">{e("; ".join(h.reasons))}</div>' if h.reasons else "")
        + (f'<div class="why">caused: {e(h.caused)}</div>' if h.caused else "")
        + "</td></tr>"
        for _, rel, h in entries
    )
    breaches = sum(1 for _, _, h in entries if h.status in ("breach", "failed"))
    heading = Heading(
        "index",
        "Conveyor reports",
        f"{len(entries)} pages, {breaches} with a breach or a failure" if entries else "no reports yet",
        "breach" if breaches else ("ok" if entries else "inconclusive"),
        reasons=["Newest first. Each page opens with its own verdict; the ledger (`conveyor audit`) holds the record."],
    )
    body = (
        '<table class="index"><thead><tr><th>when (UTC)</th><th>kind</th><th>model</th><th>version</th>'
        f"<th>verdict</th><th>page</th></tr></thead><tbody>\n{rows}\n</tbody></table>"
    )
    return publish(reports / "index.html", self_contained(heading, body), None)


_STYLE = """
body { font: 13px system-ui, sans-serif; margin: 0 0 16px; color: #1d2330; }
main, .content { margin: 0 16px; }
h2 { font-size: 15px; margin: 18px 16px 6px; }
table { border-collapse: collapse; margin: 0 16px; width: calc(100% - 32px); }
th, td { border-bottom: 1px solid #e3e6eb; padding: 4px 8px; text-align: left; vertical-align: top; overflow-wrap: anywhere; }
tr.breach td.v, tr.failed td.v, td.bad { color: #991b1b; font-weight: 600; }
tr.ok td.v, td.good { color: #14532d; }
table.index td:nth-child(-n+4) { white-space: nowrap; } table.index td.v { width: 22em; }
.why { color: #555; font-size: 12px; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; font: 12px ui-monospace, monospace; }
img { max-width: 420px; margin: 4px 16px; border: 1px solid #e3e6eb; }
@media print { tr { break-inside: avoid; } }
"""
