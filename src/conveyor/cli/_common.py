"""What every command shares: the Workspace from ``--config``, output, errors, progress.

Commands parse, call the Python API (``conveyor.api.Workspace``), and print. A ``ConveyorError``
is printed as one paragraph (what failed, why, what to do) and sets the exit code; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from rich.console import Console

    from conveyor.api import Workspace

__all__ = [
    "JSON",
    "Group",
    "emit_json",
    "fitted",
    "out",
    "progress",
    "sub_app",
    "training_progress",
    "workspace",
]

JSON = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

EXIT_CODES = (
    "Exit codes, the same for every command: 0 done; 1 refused or found (a gate said no, a check "
    "failed, drift found); 2 a usage or set-up mistake (an option, a missing or broken file); "
    "3 not enough data, or nothing to act on."
)


class Group(TyperGroup):
    """Turns a ``ConveyorError`` anywhere below into its paragraph and exit code."""

    def invoke(self, ctx: Any) -> Any:  # typer's own vendored click.Context
        # here: `conveyor --help` imports every command module and stays fast
        from conveyor.policies.errors import ConveyorError

        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            _print_error(exc)
            raise typer.Exit(exc.exit_code) from None


def _print_error(exc: Any) -> None:
    from rich.markup import escape

    text = f"[bold red]Error:[/] {escape(exc.message)}"
    if exc.hint:
        text += f" {escape(exc.hint)}"
    _console(stderr=True).print(text, soft_wrap=True)


def sub_app(help_text: str) -> typer.Typer:
    """A command group, with the same error handling and plain help as the root."""
    return typer.Typer(cls=Group, help=help_text, epilog=EXIT_CODES, no_args_is_help=True, rich_markup_mode=None)


@lru_cache(maxsize=2)
def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def out(text: Any = "") -> None:
    """One line (or a rich renderable, e.g. a table) on standard output. On a terminal a long
    line wraps at a word, within 100 columns, its continuation indented; piped, it stays one
    line (for grep; scripts read ``--json``)."""
    console = _console()
    if isinstance(text, str):
        if console.is_terminal:
            text = fitted(text, min(console.width, RESULT_WIDTH))
        console.print(text, markup=False, soft_wrap=True)
    else:
        console.print(text)


RESULT_WIDTH = 100


def fitted(text: str, width: int = RESULT_WIDTH) -> str:
    """``text`` wrapped at words to ``width`` columns, each continuation indented two spaces past
    the line's own indent; a word longer than a line (a path, a digest) is kept whole."""
    import textwrap

    lines = []
    for line in text.splitlines() or [""]:
        indent = line[: len(line) - len(line.lstrip())]
        lines.append(
            textwrap.fill(
                line,
                width,
                subsequent_indent=indent + "  ",
                break_long_words=False,
                break_on_hyphens=False,
            )
            if len(line) > width
            else line
        )
    return "\n".join(lines)


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


@contextmanager
def progress(what: str, *, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """A spinner with ``what`` while a step runs, on a terminal only (never with ``--json``);
    yields a function that replaces the text (a step's stage, say)."""
    console = _console(stderr=True)
    if quiet or not console.is_terminal:
        yield lambda text: None
        return
    with console.status(what, spinner="dots") as status:
        yield lambda text: status.update(text)


@contextmanager
def training_progress(what: str, *, quiet: bool = False) -> Iterator[None]:
    """``progress`` for a training run: the stage it is at, and how far along."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.pipelines.flows import reporting_stages

    with progress(what, quiet=quiet) as update:

        def stage(name: str, number: int, of: int) -> None:
            update(f"Training: {name} ({number} of {of})...")

        with reporting_stages(stage):
            yield


def workspace(ctx: typer.Context) -> Workspace:
    """The Workspace of this invocation: ``--config`` first in line, then the environment, the
    project file's ``settings:``, defaults. Third-party warnings and log lines are quieted."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.api import Workspace
    from conveyor.registry.workspace import quiet_libraries

    root = ctx.find_root()
    if not isinstance(root.obj, dict):
        root.obj = {}
    if "workspace" not in root.obj:
        config = root.obj.get("config")
        ws = Workspace.open(config) if config else Workspace.open()
        if not ws.project_file.is_file() and not ws.home.is_dir():
            from conveyor.policies.errors import ConfigInvalid

            raise ConfigInvalid(  # rather than a new, empty home here (and "0 events, intact")
                f"No Conveyor project here: {ws.project_file} does not exist, nor does a home at {ws.home}.",
                hint="Run in a project's folder, pass --config FILE, or set CONVEYOR_PROJECT_FILE "
                "(or CONVEYOR_HOME to read an existing record).",
            )
        ws.stores.prepare()  # telemetry off and the tools' homes in .conveyor/ before any heavy import
        quiet_libraries()
        root.obj["workspace"] = ws
    return root.obj["workspace"]
