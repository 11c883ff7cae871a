"""``conveyor demo``: the bundled project, end to end."""

from __future__ import annotations

from typing import Annotated

import typer

from conveyor.cli._common import out, workspace

__all__ = [
    "demo",
    "register",
]


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    ctx: typer.Context,
    data_only: Annotated[bool, typer.Option("--data-only", help="Only build and version the demo data.")] = False,
    no_loop: Annotated[
        bool, typer.Option("--no-loop", help="Stop after the first champion (no serving, drift or retraining).")
    ] = False,
    llm: Annotated[
        bool,
        typer.Option(
            "--llm",
            help="Only the LLM loop: build, serve, ask, add a document (rebuild, canary), feedback (re-evaluation).",
        ),
    ] = False,
    no_llm: Annotated[bool, typer.Option("--no-llm", help="Skip the LLM part.")] = False,
) -> None:
    """Run the bundled demo: data, a signed champion, then the whole loop.

    Serves the champion on 127.0.0.1, sends reference-period then drifted traffic, checks drift,
    adds labels, retrains on the new data, and lets the canary analysis promote or roll back the
    new model; prints a summary. The service is stopped at the end. Then the LLM loop on a real
    local model: the assistant built from its knowledge base, served through the gateway and asked
    questions, a new document rebuilt into a canary, negative feedback re-evaluating the champion.
    """
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.demo.run import run_demo, run_llm_only

    if llm:
        run_llm_only(workspace(ctx), out)
        return
    run_demo(workspace(ctx), out, data_only=data_only, loop=not no_loop, llm=not no_llm)
