"""One flow skeleton for every run Conveyor makes: training, an LLM release build, a retraining,
a re-evaluation.

- **Where a run goes** (``run_as_configured``): in this process unless the Workspace uses Prefect;
  with Prefect, on a worker of the work pool when the profile names one (and the flow has a
  deployment there), else a Prefect flow run in this process. Prefect is imported only then.
- **How its stages run** (``Stages``): in order, each through a ``runner`` (``direct``, or
  ``as_task``: a Prefect task of the current flow run; ``recorded_tasks`` also shows what the stage
  made in the Prefect UI). A stage returns ``Recorded``: its result, the ledger records it made and,
  when it refuses, the refusal, which is raised once the records are in the ledger (a refusal is on
  the record; nothing after it runs). Each stage is timed and announced to a progress listener.

What records itself where the record must be atomic with its effect (registering a version, a
dataset's DVC version) keeps doing so inside the stage.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from conveyor.policies.errors import ConveyorError
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger
from conveyor.registry.workspace import Workspace

__all__ = [
    "LLM_RELEASE_DEPLOYMENT",
    "TRAINING_DEPLOYMENT",
    "Record",
    "Recorded",
    "Runner",
    "Stages",
    "Summary",
    "as_task",
    "direct",
    "recorded_tasks",
    "reporting_stages",
    "run_as_configured",
    "stage_summary",
]

T = TypeVar("T")
TRAINING_DEPLOYMENT = "training/conveyor"  # the flows' deployments on a work pool (`conveyor deploy`)
LLM_RELEASE_DEPLOYMENT = "llm-release/conveyor"
Runner = Callable[..., Any]  # runner(stage name, function, *args): function(*args), however it is run
Summary = tuple[str, list[tuple[str, str]]]  # a headline, and the report's rows (label, value)


# -- where a run goes ------------------------------------------------------------------------------


def run_as_configured(
    ws: Workspace,
    here: Callable[[], T],
    *,
    flow: str,
    parameters: Mapping[str, Any],
    named: str | None = None,
    deployment: str | None = None,
) -> T:
    """``here()`` in this process, unless the Workspace uses Prefect: then the flow ``flow`` of
    ``pipelines.deployments`` with the Workspace and ``parameters``, on the work pool when the
    profile names one and the flow is deployed there (``deployment``), else as a flow run in this
    process. ``named``: the run's name in the Prefect UI."""
    if not ws.uses_prefect:
        return here()
    # here: Prefect is loaded only when a run goes to it (and the flows module imports this one)
    from conveyor.pipelines import deployments

    if deployment is not None and ws.settings.work_pool:
        result: T = deployments.run_on_worker(
            ws, deployment, {"workspace": ws.params(), **parameters}, named or deployment
        )
        return result
    logging.getLogger("prefect").setLevel(logging.CRITICAL)  # Conveyor reports refusals itself
    prefect_flow = getattr(deployments, flow)
    if named is not None:
        prefect_flow = prefect_flow.with_options(flow_run_name=named)
    result = prefect_flow(ws.params(), **parameters)
    return result


# -- how its stages run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """A ledger record a stage made: ``Ledger.append``'s arguments."""

    kind: EventKind
    inputs: Mapping[str, str | None]
    outputs: Sequence[str] = ()
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded(Generic[T]):
    """What a stage returns: its result, its records, and its refusal when it refuses."""

    result: T
    records: tuple[Record, ...] = ()
    refusal: ConveyorError | None = None


def direct(name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The runner of a run in this process: the stage, called."""
    return function(*args, **kwargs)


_on_stage: ContextVar[Callable[[str, int, int], None] | None] = ContextVar("conveyor_on_stage", default=None)


@contextmanager
def reporting_stages(listener: Callable[[str, int, int], None]) -> Iterator[None]:
    """Within: each run tells ``listener(stage, number, of)`` as a stage starts (a progress
    display; the run's result does not depend on it)."""
    token = _on_stage.set(listener)
    try:
        yield
    finally:
        _on_stage.reset(token)


class Stages:
    """A run's stages, in order: ``stages(name, function, *args)`` runs one through the runner,
    puts its records in ``ledger``, raises its refusal, and returns its result."""

    def __init__(self, ledger: Ledger, runner: Runner = direct, names: Sequence[str] = ()) -> None:
        self.ledger = ledger
        self.runner = runner
        self.names = tuple(names)  # the stages a progress display counts
        self.seconds: dict[str, float] = {}  # each stage's time, as it ran
        self._listener = _on_stage.get()

    def __call__(self, name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._listener is not None:
            number = self.names.index(name) + 1 if name in self.names else 0
            self._listener(name, number, len(self.names))

        @functools.wraps(function)  # a Prefect task takes the stage's own name and module
        def settled(*given: Any, **named: Any) -> Any:
            return self._settle(function(*given, **named))

        began = time.perf_counter()
        try:
            return self.runner(name, settled, *args, **kwargs)
        finally:
            self.seconds[name] = round(time.perf_counter() - began, 3)

    def _settle(self, made: Any) -> Any:
        """A stage's result, its records put in the ledger and its refusal raised (inside a Prefect
        task, so the task fails with it)."""
        if not isinstance(made, Recorded):
            return made
        for record in made.records:
            self.ledger.append(record.kind, inputs=record.inputs, outputs=record.outputs, details=record.details)
        if made.refusal is not None:
            raise made.refusal
        return made.result


def as_task(name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The Prefect runner: run ``function`` as a task named ``name`` of the current flow run.

    Stage inputs (data frames, the ledger) are not hashed for caching: a run always re-runs.
    """
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    stage: Any = task(name=name, cache_policy=NO_CACHE, retries=0, log_prints=False)(function)
    return stage(*args, **kwargs)


def recorded_tasks(model: str) -> Runner:
    """``as_task``, and what each stage made, in the Prefect UI: a line in the flow run's log and
    a Markdown artifact (keyed ``<model>-<stage>``, so the Artifacts page keeps its history)."""

    def runner(name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = as_task(name, function, *args, **kwargs)
        summary = stage_summary(result)
        if summary is not None:
            _publish(model, name, *summary)
        return result

    return runner


@functools.singledispatch
def stage_summary(result: Any) -> Summary | None:
    """What a stage made, told in a line and a few rows (None: a stage with nothing to tell).
    Each flow registers its stages' results."""
    return None


def _publish(model: str, stage: str, headline: str, rows: list[tuple[str, str]]) -> None:
    from prefect.artifacts import create_markdown_artifact

    log = _flow_run_log()
    log.info("%s: %s", stage, headline)
    for label, value in rows:
        if label == "warning":
            log.warning("%s: %s", stage, value)
    bar = "|"
    cells = "\n".join(f"| {label} | {value.replace(bar, '&#124;')} |" for label, value in rows)
    create_markdown_artifact(
        markdown=f"### {stage}: {headline}\n\n| | |\n|---|---|\n{cells}\n",
        key=re.sub(r"[^a-z0-9-]+", "-", f"{model}-{stage}".lower()),
        description=f"{model}, {stage}: {headline}",
    )


def _flow_run_log() -> logging.Logger:
    """A logger whose lines go to the current flow run's log in the Prefect API, and not to the
    terminal (Conveyor prints its own results; Prefect's run logger would echo them there)."""
    log = logging.getLogger("conveyor.flow_runs")
    if not log.handlers:
        from prefect.logging.handlers import APILogHandler

        log.addHandler(APILogHandler())
        log.setLevel(logging.INFO)
        log.propagate = False
    return log
