"""Release, for CI: ``verify``, ``promote``, ``rollback`` (exit 0 ok, 1 refused, 2 usage or setup)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from conveyor.cli._common import JSON, emit_json, out, progress, workspace

__all__ = [
    "print_promotion",
    "promote",
    "register",
    "rollback",
    "verify",
]


def register(app: typer.Typer) -> None:
    app.command()(verify)
    app.command()(promote)
    app.command()(rollback)


def verify(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="MODEL/VERSION or MODEL@ALIAS.")],
    as_json: JSON = False,
) -> None:
    """Verify a registered version: signature, provenance, registry tags and ledger, link by link."""
    with progress(f"Verifying {ref}...", quiet=as_json):
        report = workspace(ctx).verify(ref)
    if as_json:
        emit_json(report.to_dict())
    else:
        for link in report.links:
            out(f"{'PASS' if link.ok else 'FAIL'}  {link.name:10s} {link.detail}")
        out(f"{ref}: {'verified' if report.ok else 'NOT verified'}")
    if not report.ok:
        raise typer.Exit(1)


def promote(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="MODEL/VERSION or MODEL@ALIAS.")],
    to: Annotated[str, typer.Option("--to", help="canary or champion.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and explain, change nothing.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Promote a version whose canary was rolled back (with --rollback).")
    ] = False,
    rollback_event: Annotated[
        int | None, typer.Option("--rollback", help="The ledger event of that rollback (the refusal names it).")
    ] = None,
    as_json: JSON = False,
) -> None:
    """Verify, decide by policies/promotion.yaml, move the alias. Exit 0 promoted, 1 refused, 2 error."""
    if force != (rollback_event is not None):  # a usage mistake: exit 2
        raise typer.BadParameter(
            "--force and --rollback go together: name the rollback you override (the refusal gives N).",
            param_hint="--force --rollback N",
        )
    with progress(f"Verifying {ref} and deciding by policies/promotion.yaml...", quiet=as_json):
        outcome = workspace(ctx).promote(ref, to=to, dry_run=dry_run, force_after_rollback=rollback_event)
    if as_json:
        emit_json(outcome.to_dict())
    else:
        print_promotion(outcome)
    if not outcome.decision.ok:
        raise typer.Exit(1)


def print_promotion(outcome: Any) -> None:
    verdict = (
        "would be promoted"
        if outcome.dry_run and outcome.decision.ok
        else ("promoted" if outcome.decision.ok else "refused")
    )
    replaced = (
        f" (previous {outcome.target}: version {outcome.previous})" if outcome.decision.ok and outcome.previous else ""
    )
    out(f"{outcome.name} version {outcome.version} to {outcome.target}: {verdict}{replaced}")
    for reason in outcome.decision.reasons:
        out(f"  - {reason}")
    if outcome.event:
        out(f"  recorded as ledger event #{outcome.event}")


def rollback(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The registered model's name.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be rolled back; change and record nothing.")
    ] = False,
    as_json: JSON = False,
) -> None:
    """Point @champion back at the champion the last promotion replaced."""
    current, previous = workspace(ctx).rollback(model, dry_run=dry_run)
    if as_json:
        emit_json({"model": model, "from": current, "to": previous, "dry_run": dry_run})
    elif dry_run:
        out(f"{model}: would roll the champion back from version {current} to version {previous} (dry run).")
    else:
        out(f"{model}: champion rolled back from version {current} to version {previous}.")
