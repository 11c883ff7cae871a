"""LLM releases: ``llm build`` (the release flow) and ``llm ask`` (a verified release, answering)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from conveyor.cli._common import JSON, emit_json, out, progress, sub_app, workspace

__all__ = [
    "ask",
    "build",
    "check",
    "cost_report",
    "feedback_accept",
    "feedback_add",
    "knowledge",
    "print_release",
    "register",
    "weights",
]

llm_app = sub_app("Build, evaluate and try LLM releases (a project file with `kind: llm`, via --config).")
cost_app = sub_app("What LLM requests cost: tokens and money by team, release or version, from the inference log.")


def register(app: typer.Typer) -> None:
    app.add_typer(llm_app, name="llm")
    app.add_typer(cost_app, name="cost")
    app.add_typer(feedback_app, name="feedback")


@cost_app.command("report")
def cost_report(
    ctx: typer.Context,
    by: Annotated[str, typer.Option("--by", help="Group by team, model or version.")] = "team",
    since: Annotated[
        str | None, typer.Option("--since", help="Only requests since: 24h, 7d, 2w ago, or a date (2026-12-01).")
    ] = None,
    as_json: JSON = False,
) -> None:
    """Requests, tokens in and out, cost and cost per 1k tokens, from every logged LLM request."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.monitoring.costs import cost_report as report_of
    from conveyor.monitoring.costs import parse_since
    from conveyor.policies.errors import ConfigInvalid

    if by not in ("team", "model", "version"):
        raise ConfigInvalid(f"--by {by!r} is not a grouping.", hint="Use --by team, --by model or --by version.")
    ws = workspace(ctx)
    report = report_of(ws.stores.inference_dir(), by=by, since=parse_since(since))  # type: ignore[arg-type]
    if as_json:
        emit_json(report.to_dict())
        return
    if not report.rows:
        out(
            "No LLM requests in the inference log"
            + (f" since {report.since:%Y-%m-%d %H:%M} UTC." if report.since else ".")
        )
        return
    from rich.table import Table

    since_text = f" since {report.since:%Y-%m-%d %H:%M} UTC" if report.since else ""
    table = Table(title=f"LLM cost by {by}{since_text} (tokens in and out)")
    names = ["model", "version"] if by == "version" else [by]
    for column in [*names, "requests", "in", "out", "USD", "USD/1k", "cached", "blocked"]:
        table.add_column(column, justify="left" if column in names else "right")
    for row in [*report.rows, {n: "total" if i == 0 else "" for i, n in enumerate(names)} | report.total]:
        table.add_row(
            *(str(row[n]) for n in names),
            f"{row['requests']:,}",
            f"{row['prompt_tokens']:,}",
            f"{row['completion_tokens']:,}",
            f"{row['cost_usd']:.6f}",
            f"{row.get('usd_per_1k_tokens', 0):.6f}",
            f"{row['cached']:,}",
            f"{row['blocked']:,}",
        )
    out(table)


@llm_app.command("build")
def build(ctx: typer.Context, as_json: JSON = False) -> None:
    """Weights → prompt → build → evaluate → sign → register as @candidate. Exit 1 if the gate refuses."""
    ws = workspace(ctx)
    with progress(f"Building {ws.project_file.name}: weights, prompt, evaluation, signature...", quiet=as_json):
        outcome = ws.build_release()
    if as_json:
        from dataclasses import asdict

        emit_json(asdict(outcome))
    else:
        print_release(outcome)


def print_release(outcome: Any) -> None:
    out(f"{outcome.name} version {outcome.version} registered as @{outcome.alias}")
    out(f"  release   {outcome.release_digest}")
    out(f"  weights   {outcome.weights_digest} (kept once; the registry holds {outcome.registered_bytes:,} bytes)")
    out(f"  prompt    {outcome.prompt}" + (" (new version)" if outcome.prompt_new else " (unchanged, reused)"))
    m = outcome.metrics
    out(
        f"  gate      pass rate {m['pass_rate']:.2f}, refusal rate {m['refusal_rate']:.2f}, over-refusal "
        f"{m['over_refusal_rate']:.2f}, time to first token p95 {m['ttft_p95_ms']:.0f} ms"
    )
    if outcome.champion_version:
        c = outcome.champion_metrics or {}
        out(
            f"  champion  version {outcome.champion_version}: pass rate {c.get('pass_rate', float('nan')):.2f} on the same sets"
        )
    out(f"  report    {outcome.report}")
    out("  stages    " + ", ".join(f"{k} {v:.1f} s" for k, v in outcome.stages.items()))


@llm_app.command("ask")
def ask(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="MODEL/VERSION or MODEL@ALIAS of an LLM release.")],
    question: Annotated[str, typer.Argument(help="What to ask it.")],
    as_json: JSON = False,
) -> None:
    """Verify a release, load it here and answer one question through its guardrails."""
    ws = workspace(ctx)
    with progress(f"Verifying and loading {ref}...", quiet=as_json):
        reply = ws.ask(ref, question)
    if as_json:
        emit_json(reply.to_dict())
        return
    out(reply.text)
    fired = [reply.blocked_by] if reply.blocked_by else list(reply.redactions)
    out(
        f"({reply.prompt_tokens} tokens in, {reply.completion_tokens} out, first token {reply.ttft_ms:.0f} ms, "
        f"{reply.total_ms:.0f} ms in all" + (f"; guardrails: {', '.join(fired)}" if fired else "") + ")"
    )


@llm_app.command("weights")
def weights(ctx: typer.Context, as_json: JSON = False) -> None:
    """Check the project's weights in the store; rebuild a damaged or missing copy from the installed
    package (refused, changing nothing, when the package itself no longer verifies)."""
    with progress("Checking the weights store...", quiet=as_json):
        path, done = workspace(ctx).repair_weights()
    if as_json:
        emit_json({"path": str(path), "done": done})
        return
    out(f"{path}: {done}.")


@llm_app.command("check")
def check(
    ctx: typer.Context,
    window: Annotated[
        str | None,
        typer.Option(
            "--window", help="The last 24h, 30m, 7d, or a row count (default: policies/drift.yaml llm.window)."
        ),
    ] = None,
    no_action: Annotated[bool, typer.Option("--no-action", help="Report a breach; start no re-evaluation.")] = False,
    as_json: JSON = False,
) -> None:
    """The champion's live traffic against its evaluation traffic (Evidently descriptors, rates,
    feedback); exit 0 no breach, 1 drift or quality breach, 3 not enough data or no champion.

    A breach re-evaluates the champion on the grown evaluation sets: if it now fails its gate, the
    newest former champion that passes is restored, else it is held with an alert.
    """
    with progress("Checking the LLM traffic (Evidently)...", quiet=as_json):
        outcome = workspace(ctx).check_llm(window, act=not no_action)
    _print_llm_check(outcome, as_json=as_json)
    raise typer.Exit(outcome.result.exit_code)


def _print_llm_check(outcome: Any, *, as_json: bool = False) -> None:
    r = outcome.result
    if as_json:
        emit_json(
            {
                **r.to_dict(),
                "feedback_recorded": [f.to_dict() for f in outcome.feedback],
                "action": outcome.action.to_dict() if outcome.action else None,
            }
        )
        return
    for recorded in outcome.feedback:
        out(
            f"  feedback from the gateway: {recorded.rows} ratings, {recorded.negative} down, {recorded.candidates} new candidate cases"
        )
    out(
        f"{r.model} version {r.version}, {r.window} ({r.window_rows:,} answers) against its evaluation "
        f"({r.reference_rows} cases): {r.describe()}"
    )
    for c in r.columns:
        if c.drifted:
            out(f"  drifted  {c.column}: {c.method} {c.score:.4g} (threshold {c.threshold:g})")
    for rate in r.rates:
        mark = "BREACH" if rate.breached else "ok"
        out(
            f"  rate     {rate.name}: {rate.live:.0%} live, {rate.reference:.0%} in evaluation, p={rate.p_value:.2g} ({mark})"
        )
    if r.feedback.get("ratings"):
        out(f"  feedback {r.feedback['negative']} of {r.feedback['ratings']} rated down")
    if r.html:
        out(f"  report   {r.html}")
    out(f"  result   {r.report}  ({r.report_digest})")
    if r.trigger:
        out(f"  action   {r.trigger}")
    if outcome.action is not None:
        _print_action(outcome.action)


def _print_action(action: Any) -> None:
    out(f"  {action.status}: {action.reason}")
    for reason in action.reasons:
        out(f"    {reason}")


@llm_app.command("knowledge")
def knowledge(
    ctx: typer.Context,
    no_action: Annotated[bool, typer.Option("--no-action", help="Report a change; start no rebuild.")] = False,
    as_json: JSON = False,
) -> None:
    """Whether the champion answers from the knowledge base's current version; a new version (a new
    DVC version of the documents) rebuilds the release: index, evaluation, signature, then the
    promotion policy may make it the canary. Exit 1 if the rebuild failed."""
    with progress("Checking the knowledge base...", quiet=as_json):
        found, action = workspace(ctx).check_knowledge(act=not no_action)
    if as_json:
        emit_json({"found": found, "action": action.to_dict() if action else None})
    else:
        out(found)
        if action is not None:
            _print_action(action)
    raise typer.Exit(1 if action is not None and action.status == "failed" else 0)


feedback_app = sub_app("Ratings of LLM answers: recorded, joined to the log, bad answers made candidate cases.")


@feedback_app.command("add")
def feedback_add(
    ctx: typer.Context,
    file: Annotated[
        str, typer.Argument(help="JSONL or CSV: request_id, rating (up|down), label, correction, comment.")
    ],
    as_json: JSON = False,
) -> None:
    """Record ratings of answers; badly rated answers become candidate evaluation cases, to review
    in the candidates file and accept with `conveyor feedback accept`."""
    from pathlib import Path

    outcome = workspace(ctx).add_feedback(Path(file))
    if as_json:
        emit_json(outcome.to_dict())
        return
    out(
        f"{outcome.rows} ratings recorded ({outcome.digest}): {outcome.matched} joined to logged answers, "
        f"{outcome.negative} rated down"
    )
    if outcome.unmatched:
        out(f"  not joined (no such answer for this key in the log): {', '.join(outcome.unmatched[:5])}")
    if outcome.candidates:
        out(f"  {outcome.candidates} new candidate cases in {outcome.candidates_file}")
        out("  review them (set review.status to accepted or rejected, edit the expectations), then")
        out(f"  `conveyor feedback accept {outcome.candidates_file}`")


@feedback_app.command("accept")
def feedback_accept(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="The reviewed candidates file.")],
    as_json: JSON = False,
) -> None:
    """Add the reviewed file's accepted cases to the project's feedback set (both recorded by digest);
    the next evaluation, and the next re-evaluation of the champion, include them."""
    from pathlib import Path

    outcome = workspace(ctx).accept_feedback(Path(file))
    if as_json:
        emit_json(outcome.to_dict())
        return
    out(
        f"{outcome.accepted} cases accepted into {outcome.set}"
        + (f" ({outcome.set_digest})" if outcome.set_digest else "")
        + f"; {outcome.rejected} rejected, {outcome.pending} still pending review"
    )
