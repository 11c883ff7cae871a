"""A validation run as one self-contained HTML page, named by its dataset, suite and run.

Great Expectations' Data Docs load their styles and scripts from CDNs (offline they are unstyled)
and name a dataframe asset "None"; this page needs nothing but itself: the verdict, what was
validated (file, suite, run time, rows) and every expectation, failures first, with what was
observed and examples of the values that failed.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

__all__ = ["clipped", "write_validation_page"]


def write_validation_page(result: dict[str, Any], *, dataset: str, rows: int, path: Path) -> Path:
    """Write the page for GE's validation ``result`` (its JSON form) of ``dataset`` to ``path``."""
    e = html.escape
    checks = sorted(result["results"], key=lambda r: (r["success"], r["expectation_config"]["type"]))
    stats = result.get("statistics") or {}
    evaluated, met = stats.get("evaluated_expectations", len(checks)), stats.get("successful_expectations", 0)
    run = (result.get("meta") or {}).get("validation_time", "")
    verdict = "passed" if result["success"] else "FAILED"
    title = f"Validation of {dataset} against {result.get('suite_name', 'its suite')}: {verdict}"
    body = "\n".join(_row(r) for r in checks)
    page = _PAGE.format(
        title=e(title),
        status="ok" if result["success"] else "failed",
        verdict=e(
            f"{met} of {evaluated} expectations met" + ("" if result["success"] else f"; {evaluated - met} failed")
        ),
        dataset=e(dataset),
        suite=e(str(result.get("suite_name", ""))),
        run=e(str(run).replace("T", " ")[:26]),
        rows=f"{rows:,}",
        engine=e(str((result.get("meta") or {}).get("great_expectations_version", ""))),
        body=body,
    )
    path.write_text(page, encoding="utf-8")
    return path


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
    status = "met" if check["success"] else "failed"
    return (
        f'<tr class="{status}"><td>{status}</td><td><code>{e(column)}</code></td><td>{e(config["type"])}</td>'
        f"<td>{e(clipped(kwargs))}</td><td>{e('; '.join(seen))}</td></tr>"
    )


def clipped(value: Any, limit: int = 300) -> str:
    """``value`` as a page shows it: text as it is, anything else as JSON; cut at ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; color: #1d2330; }}
h1 {{ font-size: 19px; margin: 0 0 8px; }}
.verdict {{ padding: 6px 10px; border-radius: 6px; font-weight: 600; display: inline-block; }}
.verdict.ok {{ background: #e7f6ec; color: #14532d; }} .verdict.failed {{ background: #fde8e8; color: #7f1d1d; }}
dl {{ display: grid; grid-template-columns: max-content 1fr; gap: 2px 10px; }} dt {{ color: #555; }} dd {{ margin: 0; }}
table {{ border-collapse: collapse; width: 100%; table-layout: fixed; }}
th, td {{ border-bottom: 1px solid #e3e6eb; padding: 4px 8px; text-align: left; vertical-align: top; overflow-wrap: anywhere; }}
th:nth-child(1) {{ width: 4em; }} th:nth-child(2) {{ width: 12em; }} th:nth-child(3) {{ width: 22em; }}
tr.failed td {{ background: #fff4f4; }} tr.failed td:first-child {{ color: #991b1b; font-weight: 600; }}
@media print {{ tr {{ break-inside: avoid; }} }}
</style></head>
<body>
<h1>{title}</h1>
<p class="verdict {status}">{verdict}</p>
<dl><dt>dataset</dt><dd>{dataset}</dd><dt>suite</dt><dd>{suite}</dd><dt>run</dt><dd>{run} UTC</dd>
<dt>rows</dt><dd>{rows}</dd><dt>checked by</dt><dd>Great Expectations {engine}</dd></dl>
<table><thead><tr><th>result</th><th>column</th><th>expectation</th><th>arguments</th><th>found</th></tr></thead>
<tbody>
{body}
</tbody></table>
</body></html>
"""
