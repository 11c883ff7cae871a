"""The ``conveyor`` command line: the front door, kept thin and fast.

One module per group of users: ``data`` (config, expectations, validate, train, keys),
``release`` (verify, promote, rollback), ``llm`` (build, ask), ``record`` (lineage, audit, export), ``serving``
(serve, api-key, canary), ``monitoring`` (drift, labels, monitor), ``demo``. Each command parses
its options, calls the Python API (``conveyor.api``) and prints; the commands import what they
need when they run, so ``conveyor --help`` loads no heavy library.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from conveyor.cli._common import EXIT_CODES, Group

__all__ = ["app", "main", "stop_on_sigterm"]

app = typer.Typer(
    cls=Group,
    help="Conveyor: validated data in, signed and served models out, every step on the record.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=True,  # --install-completion and --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # plain help: rich's help renderer alone costs ~0.2 s at start
)


def _version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"conveyor {version('conveyor')}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Project config file (default: conveyor.yaml, or $CONVEYOR_PROJECT_FILE)."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = {"config": config}


from conveyor.cli import data, demo, llm, monitoring, record, release, servers, serving  # noqa: E402 - they register on ``app``

for module in (data, release, llm, record, serving, monitoring, servers, demo):
    module.register(app)


def main() -> None:
    """The console script's entry point."""
    stop_on_sigterm()
    app()


def stop_on_sigterm() -> None:
    """A SIGTERM (``kill``, a CI job's timeout, a container's stop) ends a command as Ctrl-C does:
    its ``finally`` blocks run, so the services it started are stopped and its stores closed. By
    default Python dies on the spot and leaves them running. A second SIGTERM kills at once."""
    signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)
