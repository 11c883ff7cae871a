"""The monitoring loop as a user starts it: a drift check, labels, a retraining, a monitor.

Each entry point runs as the Workspace says (``Workspace.uses_prefect``): as the Prefect flows of
``pipelines.deployments`` (a server is set, or ``flows: prefect``), or as the same plain functions
of ``pipelines.retraining`` in this process. Prefect is imported only in the first case.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from conveyor.pipelines.flows import run_as_configured
from conveyor.pipelines.retraining import DriftOutcome, LabelsOutcome, add_labels, check_drift, retrain
from conveyor.pipelines.triggers import Started, TriggerOutcome
from conveyor.registry.workspace import Workspace

__all__ = ["drift_flow", "labels", "monitor", "retraining_flow", "serve_monitoring", "start_retraining"]


def drift_flow(ws: Workspace, window: str | None = None, *, start: bool = True) -> DriftOutcome:
    """Check drift over ``window``; a breach starts a retraining (unless ``start`` is false)."""
    if not start:
        return check_drift(ws, window, start=False)
    return run_as_configured(ws, lambda: _drift_here(ws, window), flow="drift_check", parameters={"window": window})


def _drift_here(ws: Workspace, window: str | None) -> DriftOutcome:
    outcome = check_drift(ws, window)
    if outcome.started:
        outcome.retraining = start_retraining(ws, outcome.started)
    return outcome


def labels(ws: Workspace, path: Path, *, start: bool = True) -> LabelsOutcome:
    """Join the labels in ``path`` and judge quality; a breach starts a retraining (unless ``start`` is false)."""
    outcome = add_labels(ws, path, start=start)
    if outcome.started:
        outcome.retraining = start_retraining(ws, outcome.started)
    return outcome


def start_retraining(ws: Workspace, started: Started) -> TriggerOutcome | None:
    """Start the retraining a trigger recorded: on the Prefect server, as a flow, or in this process."""
    if ws.uses_prefect or started.mode == "server":
        # here: Prefect is loaded only when a run goes to it
        from conveyor.pipelines import deployments

        return deployments.start_retraining(ws, started)
    return retrain(ws, started.trigger)


def retraining_flow(ws: Workspace, trigger: str) -> TriggerOutcome:
    """Retrain for ``trigger`` (a flow run when the Workspace uses Prefect)."""
    return run_as_configured(ws, lambda: retrain(ws, trigger), flow="retraining", parameters={"trigger": trigger})


def monitor(ws: Workspace, window: str | None, every: float, checks: int | None) -> Iterator[DriftOutcome]:
    """Drift checks every ``every`` seconds in this process (``checks`` of them, or until interrupted)."""
    done = 0
    while checks is None or done < checks:
        started = time.monotonic()
        yield drift_flow(ws, window)
        done += 1
        if checks is None or done < checks:
            time.sleep(max(0.0, every - (time.monotonic() - started)))


def serve_monitoring(ws: Workspace, window: str | None, every: float, announce: Callable[[str], Any]) -> None:
    """On a Prefect server: serve the drift check (on a schedule) and the retraining (on its event
    trigger) as deployments, and run their flow runs until interrupted."""
    from prefect import serve as serve_deployments

    # here: Prefect is loaded only when a run goes to it
    from conveyor.pipelines.deployments import deployments

    ws.prepare()
    name = ws.model_name
    announce(
        f"Serving drift-check-{name} (every {every:g} s) and retraining-{name} (on {name}'s retraining "
        f"requests) on the Prefect server at {ws.prefect_api_url}; Ctrl-C stops."
    )
    serve_deployments(*deployments(ws, name, every, window), print_starting_message=False)
