"""A validation run as one self-contained HTML page, named by its dataset, suite and run.

Great Expectations' Data Docs load their styles and scripts from CDNs (offline they are unstyled)
and name a dataframe asset "None"; this page needs nothing but itself: the verdict, what was
validated (file, suite, run time, rows) and every expectation, failures first, then the
ones met with unexpected values (warnings), with what was observed and examples of the values.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.registry.pages import Heading, publish, self_contained

__all__ = ["clipped", "write_validation_page"]


def write_validation_page(
    result: dict[str, Any], *, dataset: str, rows: int, path: Path, model: str = "", reports: Path | None = None
) -> Path:
    """Write the page for GE's validation ``result`` (its JSON form) of ``dataset`` to ``path``;
    given the reports folder, the index too."""
    checks = sorted(result["results"], key=lambda r: (r["success"], not _warned(r), r["expectation_config"]["type"]))
    stats = result.get("statistics") or {}
    evaluated, met = stats.get("evaluated_expectations", len(checks)), stats.get("successful_expectations", 0)
    run = str((result.get("meta") or {}).get("validation_time", ""))
    suite = str(result.get("suite_name", ""))
    warned = [r for r in checks if r["success"] and _warned(r)]
    failed = [r for r in checks if not r["success"]]
    verdict = "passed" if result["success"] else "FAILED"
    words = f"{met} of {evaluated} expectations met" + ("" if result["success"] else f"; {evaluated - met} failed")
    words += f"; {len(warned)} met with unexpected values (warnings)" if warned else ""
    heading = Heading(
        "validation",
        f"Validation of {dataset} against {suite or 'its suite'}: {verdict}",
        words,
        "ok" if result["success"] else "failed",
        model=model,
        reasons=[f"failed: {_summary(r)}" for r in failed] + [f"warning: {_summary(r)}" for r in warned],
        samples=[("dataset", dataset), ("rows", f"{rows:,}"), ("suite", suite)],
        caused="the run goes on" if result["success"] else "the run stopped: nothing was trained or registered",
        time=_iso(run),
    )
    engine = str((result.get("meta") or {}).get("great_expectations_version", ""))
    body = (
        f'<p class="content">Checked by Great Expectations {html.escape(engine)}; failures first, then warnings. '
        "(GE's Data Docs are not built: they need styles and scripts from CDNs.)</p>"
        '<table class="checks"><thead><tr><th>result</th><th>column</th><th>expectation</th><th>arguments</th>'
        "<th>found</th></tr></thead><tbody>\n" + "\n".join(_row(r) for r in checks) + "\n</tbody></table>"
    )
    return publish(path, self_contained(heading, body, style=_STYLE), reports)


def _warned(check: dict[str, Any]) -> bool:
    """Met, but with unexpected values (an expectation with ``mostly`` below 1)."""
    return bool((check.get("result") or {}).get("unexpected_count"))


def _summary(check: dict[str, Any]) -> str:
    config, found = check["expectation_config"], check.get("result") or {}
    column = config["kwargs"].get("column") or ", ".join(config["kwargs"].get("column_list") or []) or "(table)"
    text = f"{column} {config['type']}"
    if found.get("unexpected_count"):
        text += f": {found['unexpected_count']:,} unexpected ({found.get('unexpected_percent') or 0:.2f}%)"
        if found.get("partial_unexpected_list"):
            text += f", e.g. {clipped(found['partial_unexpected_list'][:3], 80)}"
    elif found.get("observed_value") is not None:
        text += f": observed {clipped(found['observed_value'], 80)}"
    return text


def _iso(text: str) -> str:
    """GE's validation time as ISO 8601 in UTC (empty: unknown)."""
    try:
        return datetime.fromisoformat(text).astimezone(UTC).isoformat()
    except ValueError:
        return ""


def _row(check: dict[str, Any]) -> str:
    e = html.escape
    config, found = check["expectation_config"], check.get("result") or {}
    kwargs = {k: v for k, v in (config.get("kwargs") or {}).items() if k not in ("batch_id", "column", "column_list")}
    column = config["kwargs"].get("column") or ", ".join(config["kwargs"].get("column_list") or []) or "(table)"
    observed = found.get("observed_value")
    exception = (check.get("exception_info") or {}).get("exception_message")
    unexpected = found.get("unexpected_count")
    seen = [
        *([f"observed {clipped(observed)}"] if observed is not None else []),
        *([f"{unexpected:,} unexpected ({found.get('unexpected_percent') or 0:.2f}%)"] if unexpected else []),
        *([f"e.g. {clipped(found['partial_unexpected_list'][:5])}"] if found.get("partial_unexpected_list") else []),
        *([f"error: {exception}"] if exception else []),
    ]
    status = ("warning" if _warned(check) else "met") if check["success"] else "failed"
    return (
        f'<tr class="{status}"><td>{status}</td><td><code>{e(column)}</code></td><td>{e(config["type"])}</td>'
        f"<td>{e(clipped(kwargs))}</td><td>{e('; '.join(seen))}</td></tr>"
    )


def clipped(value: Any, limit: int = 300) -> str:
    """``value`` as a page shows it: text as it is, anything else as JSON; cut at ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_STYLE = """
table.checks th:nth-child(1) { width: 4.5em; } table.checks th:nth-child(2) { width: 12em; }
table.checks th:nth-child(3) { width: 22em; }
tr.failed td { background: #fff4f4; } tr.failed td:first-child { color: #991b1b; font-weight: 600; }
tr.warning td { background: #fffbeb; } tr.warning td:first-child { color: #92400e; font-weight: 600; }
"""
