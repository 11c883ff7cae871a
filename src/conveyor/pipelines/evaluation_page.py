"""An evaluation as one self-contained page, named by model and version.

A tabular model's page: its holdout metrics beside the champion's, the behavioural checks, the
plots (as data, so the page needs nothing beside it) and the holdout rows it got most wrong. An
LLM release's page: the gate's metrics and reasons, every failed case and the weakest passing
ones (question, answer, what was expected, the passages used). Both open with the verdict: the
evaluation gate's (behavioural checks; the release gate). Promotion is decided later, against
the registry's champion of that day: its decisions are in the ledger (`conveyor lineage`).

A candidate that failed its evaluation has no version: its page is named by model and run
(``MODEL-candidate-RUN.html``); a registered version's page replaces its candidate page.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from conveyor.pipelines.validation_page import clipped
from conveyor.registry.pages import Heading, publish, self_contained, write_index
from conveyor.registry.workspace import Workspace

__all__ = [
    "behaviour_reasons",
    "evaluation_page_path",
    "refresh_evaluation_page",
    "report_path",
    "write_evaluation_page",
]

_WEAKEST_PASSING = 5  # passing LLM cases shown as the weakest (lowest retrieval score)


def evaluation_page_path(reports: Path, model: str, version: str | None, run_id: str) -> Path:
    name = f"{model}-v{version}.html" if version else f"{model}-candidate-{run_id[:12]}.html"
    return reports / "evaluation" / name


def report_path(reports: Path, model: str, run_id: str, *, llm: bool) -> Path:
    """Where the flow wrote the evaluation's JSON report."""
    return reports / ("llm" if llm else "evaluation") / f"{model}-{run_id}.json"


def write_evaluation_page(
    reports: Path,
    *,
    model: str,
    version: str | None,
    run_id: str,
    report: dict[str, Any],
    llm: bool,
    gate: tuple[bool, list[str]],
    path: Path | None = None,
    reevaluation: str | None = None,
) -> Path:
    """Write the page of one evaluation (``report``: the JSON the flow wrote) and the index.
    ``reevaluation``: what started a re-evaluation of a registered version (then ``path`` names
    the page)."""
    passed, reasons = gate
    what = f"version {version}" if version else f"candidate (run {run_id[:12]})"
    verdict = "passed its evaluation gate" if passed else "FAILED its evaluation gate"
    if reevaluation is not None:
        verdict = verdict.replace("evaluation gate", "gate on the current sets")
        caused = f"re-evaluated for {reevaluation}: " + (
            "it stays as it is" if passed else "the loop restores a former champion that passes, or holds this one"
        )
    elif passed and version is None:
        caused = "goes on to signing and registration"
    elif passed:
        caused = f"registered as version {version}; promotion is decided by `conveyor promote` and the canary"
    else:
        caused = "nothing was signed or registered"
    metrics = report.get("metrics") or {}
    samples = (
        [("cases", f"{len(report.get('cases') or []):,} ({sum(not c['passed'] for c in report['cases'])} failed)")]
        if llm
        else [("holdout", f"{int(report.get('holdout_rows') or 0):,} rows (the latest by event time)")]
    )
    champion = report.get("champion_version") or report.get("champion")
    if champion:
        samples.append(("champion compared", f"version {champion}, on the same {'cases' if llm else 'rows'}"))
    if not llm:
        reasons = [*_against_champion(metrics, _champion_metrics(report), champion), *reasons]
    heading = Heading(
        "re-evaluation" if reevaluation is not None else "evaluation",
        f"{'Re-evaluation' if reevaluation is not None else 'Evaluation'} of {model} {what}: "
        f"{'passed' if passed else 'FAILED'}",
        verdict,
        "ok" if passed else "failed",
        model=model,
        version=version,
        reasons=[r for r in reasons if r] or [verdict],
        samples=[*samples, ("run", run_id)],
        caused=caused,
    )
    sections = [_metrics_table(metrics, _champion_metrics(report), champion)]
    if llm:
        sections.append(_llm_cases(report.get("cases") or []))
    else:
        sections.append(_behaviour(report.get("behaviour") or []))
        sections.append(_weakest_rows(report.get("weakest") or []))
        folder = report_path(reports, model, run_id, llm=False).with_suffix("")
        sections.append(_plots(sorted(folder.glob("*.png")) if folder.is_dir() else []))
    path = path or evaluation_page_path(reports, model, version, run_id)
    page = publish(path, self_contained(heading, "\n".join(sections), style=_STYLE), None)
    if version is not None and reevaluation is None:  # the version's page takes the place of its candidate page
        evaluation_page_path(reports, model, None, run_id).unlink(missing_ok=True)
    write_index(reports)
    return page


def refresh_evaluation_page(ws: Workspace, name: str, version: str) -> Path | None:
    """(Re)write the page of ``name`` version ``version`` from the record: its registry tags name the
    run, the run's JSON report holds the evaluation and the gate. None where the
    version has no evaluation report (registered by hand, or a report that was removed)."""
    tags = ws.mlflow().get_model_version(name, version).tags
    run_id = tags.get("conveyor.run_id")
    if not run_id:
        return None
    llm = tags.get("conveyor.kind") == "llm-release"
    path = report_path(ws.reports, name, run_id, llm=llm)
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    if llm:
        decision = report.get("decision") or {}
        gate = (bool(decision.get("ok", True)), list(decision.get("reasons") or []))
    else:
        failed = [b for b in report.get("behaviour") or [] if not b["passed"]]
        gate = (not failed, behaviour_reasons(report.get("behaviour") or []))
    return write_evaluation_page(
        ws.reports, model=name, version=version, run_id=run_id, report=report, llm=llm, gate=gate
    )


def behaviour_reasons(behaviour: list[dict[str, Any]]) -> list[str]:
    if not behaviour:
        return ["no behavioural checks in the project config"]
    return [
        f"raising {b['feature']} by {b['delta']:g} should {b['direction']} the prediction: it did so for "
        f"{b['share']:.0%} of rows (mean change {b['mean_change']:+.4f}): {'passed' if b['passed'] else 'FAILED'}"
        for b in behaviour
    ]


def _against_champion(metrics: dict[str, float], champion: dict[str, float], version: str | None) -> list[str]:
    """The compared metric against the champion, with the interval of the gain where there is one."""
    gains = sorted(k.removeprefix("gain_low_") for k in champion if k.startswith("gain_low_"))
    return [
        f"{m} {metrics[m]:.4f} against {champion[m]:.4f} for the champion (version {version}); 95% interval of "
        f"the gain [{champion['gain_low_' + m]:+.4f}, {champion['gain_high_' + m]:+.4f}]"
        for m in gains
        if m in metrics and m in champion and f"gain_high_{m}" in champion
    ]


def _champion_metrics(report: dict[str, Any]) -> dict[str, float]:
    return dict(report.get("champion_metrics") or {})


def _metrics_table(metrics: dict[str, float], champion: dict[str, float], version: str | None) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(k)}</td><td>{v:.4f}</td><td>{'' if k not in champion else f'{champion[k]:.4f}'}</td></tr>"
        for k, v in sorted(metrics.items())
        if isinstance(v, int | float)
    )
    extra = "".join(
        f"<tr><td>{e(k)}</td><td></td><td>{v:.4f}</td></tr>"
        for k, v in sorted(champion.items())
        if k.startswith("gain_")
    )
    head = f"champion (v{e(version)})" if version else "champion (none)"
    return (
        f"<h2>Metrics</h2><table><thead><tr><th>metric</th><th>this evaluation</th><th>{head}</th></tr></thead>"
        f"<tbody>{rows}{extra}</tbody></table>"
    )


def _behaviour(behaviour: list[dict[str, Any]]) -> str:
    if not behaviour:
        return "<h2>Behavioural checks</h2><p class=content>None in the project config.</p>"
    rows = "".join(
        f'<tr><td class="{"good" if b["passed"] else "bad"}">{"passed" if b["passed"] else "FAILED"}</td>'
        f"<td>raise {html.escape(b['feature'])} by {b['delta']:g}</td><td>should {html.escape(b['direction'])}</td>"
        f"<td>{b['share']:.1%} of rows did; mean change {b['mean_change']:+.4f}</td></tr>"
        for b in behaviour
    )
    return (
        "<h2>Behavioural checks</h2><table><thead><tr><th>result</th><th>change</th><th>prediction</th>"
        f"<th>found</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _weakest_rows(weakest: list[dict[str, Any]]) -> str:
    if not weakest:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(str(w.get('entity')))}</td><td>{e(str(w.get('time') or ''))[:19]}</td>"
        f"<td>{e(str(w['expected']))}</td><td>{e(str(w['predicted']))}</td><td>{w['loss']:.3f}</td>"
        f"<td>{e(clipped('; '.join(f'{k}: {v}' for k, v in (w.get('features') or {}).items()), 500))}</td></tr>"
        for w in weakest
    )
    return (
        f"<h2>Weakest cases: the {len(weakest)} holdout rows it got most wrong</h2><table class=rows><thead><tr><th>entity</th>"
        "<th>time</th><th>expected</th><th>predicted</th><th>loss</th><th>features</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _plots(plots: list[Path]) -> str:
    images = "".join(
        f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in plots
    )
    return f"<h2>Plots</h2><div>{images}</div>" if images else ""


def _llm_cases(cases: list[dict[str, Any]]) -> str:
    failed = [c for c in cases if not c["passed"]]
    passing = [c for c in cases if c["passed"] and c["scores"].get("retrieval") is True]
    weakest = sorted(passing, key=lambda c: float(c["answer"].get("retrieval_score") or 0.0))[:_WEAKEST_PASSING]
    parts = [f"<h2>Failed cases ({len(failed)} of {len(cases)})</h2>", _case_table(failed) if failed else ""]
    if not failed:
        parts.append("<p class=content>None.</p>")
    if weakest:
        parts += [
            f"<h2>Weakest passing cases: the {len(weakest)} with the lowest retrieval score</h2>",
            _case_table(weakest),
        ]
    return "\n".join(parts)


def _case_table(cases: list[dict[str, Any]]) -> str:
    e = html.escape
    rows = []
    for c in cases:
        answer = c["answer"]
        failing = ", ".join(k for k, v in c["scores"].items() if v is False) or "none"
        expected = c.get("expected") or ({"refuse": c["refuse"]} if c.get("refuse") is not None else {})
        passages = ", ".join(str(p) for p in answer.get("documents") or []) or "none"
        if answer.get("blocked_by"):
            passages += f"; blocked by {answer['blocked_by']}"
        rows.append(
            f"<tr><td>{e(c['set'])}/{e(c['id'])}</td><td>{e(c.get('question') or '')}</td>"
            f"<td><pre>{e(clipped(answer.get('text') or '', 600))}</pre></td><td>{e(clipped(expected, 300))}</td>"
            f"<td>{e(passages)} (score {float(answer.get('retrieval_score') or 0):.3f})</td><td>{e(failing)}</td></tr>"
        )
    return (
        "<table class=cases><thead><tr><th>case</th><th>question</th><th>answer</th><th>expected</th>"
        f"<th>passages</th><th>failed scorers</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


_STYLE = """
table.rows td:nth-child(-n+5) { white-space: nowrap; }
table.cases th:nth-child(1) { width: 9em; } table.cases th:nth-child(3) { width: 30%; }
"""
