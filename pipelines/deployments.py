"""The monitoring loop's Prefect flows and deployments (this module imports Prefect).

``drift_check`` and ``retraining`` are module-level flows so that a Prefect server can run them
from their entry points (``pipelines/deployments.py:retraining``). Their parameters are the
Workspace's plain form (``Workspace.params()``). In embedded mode the drift check calls the
retraining flow itself, as a subflow; with a Prefect server it emits
``conveyor.retraining.requested``, and ``deployments`` builds the two deployments ``conveyor
monitor`` serves: the drift check on an interval schedule, and the retraining with an event
trigger for this model, whose payload names the ledger's trigger record. ``prefect.yaml``
declares the same two for ``prefect deploy`` with a process work pool.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

from prefect import flow

from conveyor.monitoring.trigger import RETRAINING_EVENT
from conveyor.registry.workspace import Workspace

if TYPE_CHECKING:  # imported inside the flows: a triggered run reaches "Running" before pandas loads
    from conveyor.pipelines.retraining import DriftOutcome, RetrainingOutcome, Started

__all__ = ["deployments", "drift_check", "retraining", "start_retraining"]

logging.getLogger("prefect").setLevel(logging.CRITICAL)  # Conveyor reports outcomes itself
warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")  # its schema hints, in served flow runs


def _named(stage: str) -> Any:
    """A flow run's name in the Prefect UI: the stage and what it acts on."""

    def name() -> str:
        from prefect.runtime import flow_run

        given = flow_run.parameters
        if "trigger" in given:
            return f"{stage} (trigger {str(given['trigger'])[:19]}…)"
        return f"{stage} ({given.get('window') or 'the policy window'})"

    return name


@flow(name="retraining", flow_run_name=_named("retraining"), validate_parameters=False, log_prints=False)
def retraining(workspace: dict[str, Any], trigger: str) -> RetrainingOutcome:
    """Retrain for the ledger's trigger ``trigger``: newest labelled data, every gate, at most the canary."""
    from conveyor.pipelines.retraining import retrain
    from conveyor.pipelines.training import recorded_tasks

    ws = Workspace.from_params(workspace)
    return retrain(ws, trigger, recorded_tasks(ws.model_name))


@flow(name="drift-check", flow_run_name=_named("drift check"), validate_parameters=False, log_prints=False)
def drift_check(workspace: dict[str, Any], window: str | None = None) -> DriftOutcome:
    """Check the champion's traffic for drift; a breach starts ``retraining`` (a subflow, or an event)."""
    from conveyor.pipelines.retraining import check_drift

    ws = Workspace.from_params(workspace)
    outcome = check_drift(ws, window)
    if outcome.started:
        outcome.retraining = start_retraining(ws, outcome.started)
    return outcome


def start_retraining(ws: Workspace, started: Started) -> RetrainingOutcome | None:
    """Embedded: run the retraining flow now (a subflow when called from a flow). Server: emit the event."""
    if started.mode == "server":
        from prefect.events import emit_event

        emit_event(
            RETRAINING_EVENT,
            resource={"prefect.resource.id": f"conveyor.model.{ws.model_name}"},
            payload={"trigger": started.trigger},
        )
        return None
    return retraining(ws.params(), started.trigger)


def deployments(ws: Workspace, model: str, interval_seconds: float, window: str | None) -> list[Any]:
    """The two deployments a monitoring process serves on a Prefect server."""
    from datetime import timedelta

    from prefect.events import DeploymentEventTrigger

    parameters = {"workspace": ws.params()}
    trigger = DeploymentEventTrigger(
        name=f"retrain {model} on request",
        expect={RETRAINING_EVENT},
        match={"prefect.resource.id": f"conveyor.model.{model}"},
        parameters={**parameters, "trigger": "{{ event.payload.trigger }}"},
    )
    return [
        retraining.to_deployment(f"retraining-{model}", parameters=parameters, triggers=[trigger]),
        drift_check.to_deployment(
            f"drift-check-{model}",
            parameters={**parameters, "window": window},
            interval=timedelta(seconds=interval_seconds),
        ),
    ]
