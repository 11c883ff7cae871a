"""Monitoring: ``drift check``, ``labels add``, ``monitor``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from conveyor.cli._common import JSON, emit_json, out, progress, sub_app, workspace

__all__ = [
    "drift_check",
    "labels_add",
    "monitor",
    "register",
]

drift_app = sub_app("Compare live traffic with what the champion learned from.")
labels_app = sub_app("Bring ground truth to logged predictions.")


def register(app: typer.Typer) -> None:
    app.add_typer(drift_app, name="drift")
    app.add_typer(labels_app, name="labels")
    app.command()(monitor)


def _window_option(value: str | None) -> str | None:
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.policies.drift import parse_window

    if value is not None:
        try:
            parse_window(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


_WINDOW = Annotated[
    str | None,
    typer.Option(
        "--window",
        "-w",
        callback=_window_option,
        help="Traffic to check: a duration (30m, 24h, 7d) or a row count (5000); default: policies/drift.yaml.",
    ),
]
_NO_RETRAIN = Annotated[bool, typer.Option("--no-retrain", help="Record a breach, but start no retraining.")]


@drift_app.command("check")
def drift_check(
    ctx: typer.Context, window: _WINDOW = None, no_retrain: _NO_RETRAIN = False, as_json: JSON = False
) -> None:
    """Check the champion's traffic for drift (Evidently); exit 0 no drift, 1 drift, 3 not enough data or no champion.

    A drift breach starts the retraining flow (cooldown and one retraining per breach window, from
    policies/drift.yaml); the new model can at most become the canary.
    """
    with progress("Checking drift (Evidently)...", quiet=as_json):
        outcome = workspace(ctx).drift(window, retrain=not no_retrain)
    result = outcome.result
    if as_json:
        emit_json({**result.to_dict(), "retraining": outcome.retraining.to_dict() if outcome.retraining else None})
    else:
        out(
            f"{result.model} version {result.version}, {result.window} ({result.window_rows:,} rows) against its "
            f"training set ({result.reference_rows:,} rows): {result.describe()}"
        )
        for column in result.columns:
            if column.drifted:
                out(f"  drifted  {column.column}: {column.method} {column.score:.4g} (threshold {column.threshold:g})")
        if result.html:
            out(f"  report   {result.html}")
        out(f"  result   {result.report}  ({result.report_digest})")
        if result.trigger:
            out(f"  retraining {result.trigger}")
        _print_retraining(outcome)
    raise typer.Exit(result.exit_code)


def _print_retraining(outcome: Any) -> None:
    if outcome.started is not None and outcome.started.mode == "server":
        out(
            f"  retraining requested from the Prefect server (trigger {outcome.started.trigger}, ledger event #{outcome.started.event})"
        )
    if outcome.retraining is not None:
        r = outcome.retraining
        out(f"  retraining {r.status}: {r.reason}")
        for reason in r.reasons:
            out(f"    {reason}")


def monitor(
    ctx: typer.Context,
    window: _WINDOW = None,
    interval: Annotated[
        float | None, typer.Option(min=1, help="Seconds between checks (default: policies/drift.yaml).")
    ] = None,
    checks: Annotated[int | None, typer.Option(min=1, help="Stop after this many checks (embedded mode).")] = None,
) -> None:
    """Check for drift periodically; a breach starts retraining.

    Embedded (no PREFECT_API_URL): a loop in this process. With a Prefect server (PREFECT_API_URL):
    serves two deployments there, the drift check on a schedule and the retraining with an event
    trigger, and runs their flow runs until stopped (Ctrl-C).
    """
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.pipelines.loop import monitor as checks_every
    from conveyor.pipelines.loop import serve_monitoring

    ws = workspace(ctx)
    every = interval or ws.stores.drift_policy().monitor.interval_seconds
    if ws.stores.prefect_api_url:
        serve_monitoring(ws.stores, window, every, out)
        return
    done = 0
    try:
        for outcome in checks_every(ws.stores, window, every, checks):
            done += 1
            result = outcome.result
            out(
                f"check {done}: {result.model} v{result.version}, {result.window} ({result.window_rows:,} rows): {result.describe()}"
            )
            if result.trigger:
                out(f"  retraining {result.trigger}")
            _print_retraining(outcome)
    except KeyboardInterrupt:
        out(f"Stopped after {done} check(s).")


@labels_app.command("add")
def labels_add(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV or Parquet with the entity key, event timestamp and target.")],
    no_retrain: _NO_RETRAIN = False,
    as_json: JSON = False,
) -> None:
    """Join ground truth to logged predictions and check quality; a breach starts retraining.

    A labels file that also has every feature column is labelled data: the next retraining learns from it.
    """
    outcome = workspace(ctx).add_labels(file, retrain=not no_retrain)
    if as_json:
        emit_json(asdict(outcome))
        return
    kind = "labelled data (every feature present)" if outcome.complete else "labels only"
    out(f"{file}: {outcome.rows:,} labels, {kind}, recorded as {outcome.digest}")
    out(f"  joined   {outcome.matched:,} to logged predictions" + (f" ({outcome.joined})" if outcome.joined else ""))
    out(f"  quality  {outcome.quality.describe()}")
    if outcome.decision is not None:
        out(f"  retraining {'started' if outcome.decision.start else 'not started'}: {outcome.decision.reason}")
    _print_retraining(outcome)
