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

import contextlib
import io
import logging
import warnings
from typing import TYPE_CHECKING, Any

from prefect import flow

from conveyor.monitoring.trigger import RETRAINING_EVENT
from conveyor.pipelines.flows import LLM_RELEASE_DEPLOYMENT, TRAINING_DEPLOYMENT, recorded_tasks
from conveyor.policies.errors import ConfigInvalid
from conveyor.registry.workspace import Workspace

if TYPE_CHECKING:  # imported inside the flows: a triggered run reaches "Running" before pandas loads
    from conveyor.pipelines.retraining import DriftOutcome
    from conveyor.pipelines.triggers import Started, TriggerOutcome

__all__ = [
    "deploy_to_pool",
    "deployments",
    "drift_check",
    "llm_reevaluation",
    "llm_release",
    "retraining",
    "run_on_worker",
    "start_retraining",
    "training",
]

RESULTS_BLOCK = "conveyor-results"  # a remote-file-system block: flow results in the object store

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


@flow(name="training", validate_parameters=False, log_prints=False)
def training(workspace: dict[str, Any], data: str | None = None, cause: str | None = None) -> Any:
    """Validate, build features, train, evaluate, sign and register: each stage a task."""
    # here: the flow modules import this one (to send their runs to Prefect)
    from conveyor.pipelines.training import run_training

    ws = Workspace.from_params(workspace)
    return run_training(ws, data, cause=cause, runner=recorded_tasks(ws.model_name))


@flow(name="llm-release", validate_parameters=False, log_prints=False)
def llm_release(workspace: dict[str, Any], cause: str | None = None) -> Any:
    """Weights, evaluation sets, knowledge index, prompt, build, evaluate, sign and register an
    LLM release (``kind: llm``): each stage a task. ``cause``: the trigger of a rebuild."""
    # here: the flow modules import this one (to send their runs to Prefect)
    from conveyor.pipelines.llm.flow import run_release

    ws = Workspace.from_params(workspace)
    return run_release(ws, runner=recorded_tasks(ws.llm_project().name), cause=cause)


@flow(name="retraining", flow_run_name=_named("retraining"), validate_parameters=False, log_prints=False)
def retraining(workspace: dict[str, Any], trigger: str) -> TriggerOutcome:
    """Retrain for the ledger's trigger ``trigger``: newest labelled data, every gate, at most the canary."""
    # here: the flow modules import this one (to send their runs to Prefect)
    from conveyor.pipelines.retraining import retrain

    ws = Workspace.from_params(workspace)
    return retrain(ws, trigger, recorded_tasks(ws.model_name))


@flow(name="llm-reevaluation", flow_run_name=_named("re-evaluation"), validate_parameters=False, log_prints=False)
def llm_reevaluation(workspace: dict[str, Any], trigger: str) -> Any:
    """The LLM champion on its grown evaluation sets for the ledger's trigger ``trigger``; a former
    champion restored if it now fails its gate."""
    # here: the flow modules import this one (to send their runs to Prefect)
    from conveyor.pipelines.llm.loop import reevaluate_here

    return reevaluate_here(Workspace.from_params(workspace), trigger)


@flow(name="drift-check", flow_run_name=_named("drift check"), validate_parameters=False, log_prints=False)
def drift_check(workspace: dict[str, Any], window: str | None = None) -> DriftOutcome:
    """Check the champion's traffic for drift; a breach starts ``retraining`` (a subflow, or an event)."""
    # here: the flow modules import this one (to send their runs to Prefect)
    from conveyor.pipelines.retraining import check_drift

    ws = Workspace.from_params(workspace)
    outcome = check_drift(ws, window)
    if outcome.started:
        outcome.retraining = start_retraining(ws, outcome.started)
    return outcome


def start_retraining(ws: Workspace, started: Started) -> TriggerOutcome | None:
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


def deployments(ws: Workspace, model: str, interval_seconds: float, window: str | None, **options: Any) -> list[Any]:
    """The two deployments a monitoring process serves on a Prefect server (``options``: more of
    ``to_deployment``'s, e.g. for a work pool)."""
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
        retraining.to_deployment(f"retraining-{model}", parameters=parameters, triggers=[trigger], **options),
        drift_check.to_deployment(
            f"drift-check-{model}",
            parameters={**parameters, "window": window},
            interval=timedelta(seconds=interval_seconds),
            **options,
        ),
    ]


def deploy_to_pool(ws: Workspace) -> list[str]:
    """The flows as deployments on the server profile's work pool (its workers run them): training
    and the LLM release build for any project; for a tabular one, the drift check on the policy's
    interval and retraining on its event for its model. Flow results go to the object store (a
    ``remote-file-system`` block), so the command that started a run reads its outcome wherever
    the worker ran. Returns the deployments' names."""
    pool, bucket = ws.settings.work_pool, ws.settings.bucket
    if not pool or not bucket:
        raise ConfigInvalid(
            "Deployments need a work pool and a bucket for flow results (CONVEYOR_WORK_POOL, CONVEYOR_BUCKET).",
            hint='Set the server profile (README: "Server profile").',
        )
    with _server_errors(ws, pool):
        return _deploy(ws, pool, bucket)


def _deploy(ws: Workspace, pool: str, bucket: str) -> list[str]:
    from prefect.deployments.runner import EntrypointType, deploy
    from prefect.filesystems import RemoteFileSystem

    settings = ws.settings
    results = RemoteFileSystem(
        basepath=f"s3://{bucket}/prefect-results",
        settings={"client_kwargs": {"endpoint_url": settings.object_store_url}} if settings.object_store_url else {},
    )
    results.save(RESULTS_BLOCK, overwrite=True)
    env = {
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": f"remote-file-system/{RESULTS_BLOCK}",
    }
    options: dict[str, Any] = {"entrypoint_type": EntrypointType.MODULE_PATH, "job_variables": {"env": env}}
    parameters = {"workspace": ws.params()}  # the defaults: a run names its own project
    made: list[Any] = [
        training.to_deployment(TRAINING_DEPLOYMENT.split("/")[1], parameters=parameters, **options),
        llm_release.to_deployment(LLM_RELEASE_DEPLOYMENT.split("/")[1], parameters=parameters, **options),
    ]
    if not ws.is_llm:  # the tabular monitoring loop's two, for this model
        made += deployments(ws, ws.model_name, ws.drift_policy().monitor.interval_seconds, None, **options)
    with contextlib.redirect_stdout(io.StringIO()):  # its table of deployments; the command says what it made
        deploy(*made, work_pool_name=pool, build=False, push=False, print_next_steps_message=False)
    return [f"{d.flow_name}/{d.name}" for d in made]


def run_on_worker(ws: Workspace, deployment: str, parameters: dict[str, Any], run_name: str) -> Any:
    """Start ``deployment`` on the work pool and wait for it; its result, or the flow's own error."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        with _server_errors(ws, ws.settings.work_pool or ""):
            run: Any = run_deployment(deployment, parameters=parameters, flow_run_name=run_name, timeout=None)
    except ObjectNotFound:
        raise ConfigInvalid(
            f"The Prefect server at {ws.prefect_api_url} has no deployment {deployment}.",
            hint="Run `conveyor deploy` once (it puts the flows on the work pool), then again.",
        ) from None
    state = run.state
    if state is None or not state.is_final():
        raise RuntimeError(f"flow run {run.id} ended without a final state")
    return state.result(raise_on_failure=True)


@contextlib.contextmanager
def _server_errors(ws: Workspace, pool: str) -> Any:
    """The Prefect server's set-up mistakes (no such pool, no server there) as one paragraph."""
    import httpx

    try:
        yield
    except httpx.TransportError as exc:
        raise ConfigInvalid(
            f"The Prefect server at {ws.prefect_api_url} does not answer ({exc}).",
            hint="Start it, or fix CONVEYOR_PREFECT_API_URL; `conveyor doctor` checks every store.",
        ) from None
    except ValueError as exc:
        if "work pool" not in str(exc):
            raise
        raise ConfigInvalid(
            f"The Prefect server at {ws.prefect_api_url} has no work pool {pool}.",
            hint=f"Create it (`prefect work-pool create {pool} --type process`) and start a worker on it "
            f"(`prefect worker start --pool {pool}`).",
        ) from None
