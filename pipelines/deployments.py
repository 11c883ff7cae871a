"""The monitoring loop's Prefect flows and deployments (this module imports Prefect).

``drift_check`` and ``retraining`` are module-level flows so that a Prefect server can run them
from their entry points (``pipelines/deployments.py:retraining``). In embedded mode the drift
check calls the retraining flow itself, as a subflow. On a server, ``deployments`` builds the two
deployments ``conveyor monitor`` serves: the drift check on an interval schedule, and the
retraining with an event trigger on ``conveyor.retraining.requested`` for this model, whose
payload names the ledger's trigger record. ``prefect.yaml`` declares the same two for
``prefect deploy`` with a process work pool.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow

from monitoring.trigger import RETRAINING_EVENT

if TYPE_CHECKING:  # imported inside the flows: a triggered run reaches "Running" before pandas loads
    from pipelines.retraining import DriftOutcome, RetrainingOutcome
    from pipelines.training import TrainingRequest

__all__ = ["deployments", "drift_check", "request_of", "retraining"]

logging.getLogger("prefect").setLevel(logging.CRITICAL)  # Conveyor reports outcomes itself
warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")  # its schema hints, in served flow runs


def request_of(values: dict[str, Any]) -> TrainingRequest:
    """A ``TrainingRequest`` from flow parameters; relative paths are taken from the working directory."""
    from pipelines.training import TrainingRequest

    known = {f.name for f in fields(TrainingRequest)}
    values = {k: v for k, v in values.items() if k in known}
    for name in ("config_file", "root", "home"):
        values[name] = str(Path(values[name]).absolute())
    for name in ("ledger_url", "mlflow_tracking_uri"):
        prefix = "sqlite:///"
        if values[name].startswith(prefix) and not values[name][len(prefix):].startswith("/"):
            values[name] = prefix + str(Path(values[name][len(prefix):]).absolute())
    return TrainingRequest(**values)


@flow(name="retraining", validate_parameters=False, log_prints=False)
def retraining(request: dict[str, Any], trigger: str) -> RetrainingOutcome:
    """Retrain for the ledger's trigger ``trigger``: newest labelled data, every gate, at most the canary."""
    from pipelines.retraining import retrain
    from pipelines.training import as_task

    return retrain(request_of(request), trigger, as_task)


@flow(name="drift-check", validate_parameters=False, log_prints=False)
def drift_check(request: dict[str, Any], window: str | None = None) -> DriftOutcome:
    """Check the champion's traffic for drift; a breach starts ``retraining`` (a subflow, or an event)."""
    from pipelines.retraining import check_drift

    return check_drift(request_of(request), window)


def deployments(request: TrainingRequest, model: str, interval_seconds: float, window: str | None) -> list[Any]:
    """The two deployments a monitoring process serves on a Prefect server."""
    from datetime import timedelta

    from prefect.events import DeploymentEventTrigger

    parameters = {"request": asdict(request)}
    trigger = DeploymentEventTrigger(
        name=f"retrain {model} on request", expect={RETRAINING_EVENT},
        match={"prefect.resource.id": f"conveyor.model.{model}"},
        parameters={**parameters, "trigger": "{{ event.payload.trigger }}"},
    )  # fmt: skip
    return [
        retraining.to_deployment(f"retraining-{model}", parameters=parameters, triggers=[trigger]),
        drift_check.to_deployment(f"drift-check-{model}", parameters={**parameters, "window": window},
                                  interval=timedelta(seconds=interval_seconds)),  # fmt: skip
    ]
