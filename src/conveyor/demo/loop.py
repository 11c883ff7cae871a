"""The demo's closed loop, after its first champion: serve, drift, labels, retrain, canary, verdict.

It serves the project on 127.0.0.1 in the background (``conveyor serve``), sends traffic like
the champion's training data, checks it (no drift), sends the later, drifted applications, lets
their outcomes arrive as labels, checks again (drift: the trigger starts the retraining flow on
the newest labelled data), has the service load the new canary, and drives traffic until the
canary analysis promotes it or rolls it back. Every step is an ordinary Conveyor operation; the
service is stopped however the loop ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from conveyor.cli._common import training_progress
from conveyor.demo.record import DemoRecord
from conveyor.demo.service import LocalService, drive
from conveyor.pipelines.loop import drift_flow, labels
from conveyor.policies.project import ProjectConfig
from conveyor.registry.events import EventKind, typed
from conveyor.registry.inference_log import read_log
from conveyor.registry.workspace import Workspace
from conveyor.serving.auth import open_api_keys

__all__ = ["LoopStep", "canary_verdict", "run_loop"]

_TRAFFIC_ROWS = 1_500  # rows per traffic phase (each its own request)
_CANARY_SECONDS = 150  # the canary phase stops driving traffic after this long, whatever the verdict


@dataclass
class LoopStep:
    step: str
    outcome: str
    seconds: float
    links: list[str] = field(default_factory=list)


def run_loop(
    ws: Workspace, reference: Path, drifted: Path, say: Callable[[str], None], record: DemoRecord
) -> list[LoopStep]:
    """Run the loop on ``reference``-like and then ``drifted`` traffic; returns one row per step;
    each outcome it prints is noted in ``record``."""
    project = ws.project()
    keys = open_api_keys(ws)
    client = keys.create("demo-traffic", per_second=100_000, burst=100_000)
    admin = keys.create("demo-admin", admin=True)
    steps: list[LoopStep] = []
    stores = {
        k: v for k, v in ws.environment().items() if k.startswith("CONVEYOR_")
    }  # the service uses this run's stores
    service = LocalService(ws.project_file, env=stores, log=ws.home / "logs" / "demo-serve.log")
    log = ws.inference_dir(project.model_name)

    def timed(name: str, action: Callable[[], tuple[str, list[str]]]) -> None:

        say(f"{name}...")
        started = time.monotonic()
        with training_progress(f"{name}..."):  # a spinner on a terminal; a retraining shows its stages
            outcome, links = action()
        steps.append(LoopStep(name, outcome, time.monotonic() - started, links))
        say(f"  {outcome}")

    try:
        timed("serve the champion on 127.0.0.1", lambda: (_start(service), [str(service.log)]))
        past = _rows(reference, project, _TRAFFIC_ROWS, tail=True)
        timed("reference-period traffic", lambda: (_traffic(service, client, past, log), []))
        timed("drift check (reference traffic)", lambda: _drift(ws, len(past)))
        later = _rows(drifted, project, _TRAFFIC_ROWS)
        timed("drifted traffic", lambda: (_traffic(service, client, later, log), []))
        timed("labels arrive for the drifted applications", lambda: _labels(ws, drifted))
        retrained: dict[str, Any] = {}
        timed("drift check (drifted traffic) -> retraining", lambda: _drift(ws, len(later), retrained))
        if retrained.get("version"):
            record.registered(project.model_name, str(retrained["version"]))
        if retrained.get("canary"):
            record.promoted(project.model_name, str(retrained["version"]), "canary", True)
            timed(
                f"canary v{retrained['version']}: weighted traffic and analysis",
                lambda: _canary(service, client, admin, later, ws, project.model_name, retrained["version"], record),
            )
    finally:
        service.stop()
        keys.revoke("demo-traffic")
        keys.revoke("demo-admin")
        keys.close()
    return steps


def _start(service: LocalService) -> str:
    service.start()
    return f"ready at {service.url}"


def _rows(path: Path, project: ProjectConfig, n: int, *, tail: bool = False) -> list[dict[str, Any]]:
    """``n`` rows of ``path`` as request rows: the model's inputs plus entity key and event time."""
    frame = pd.read_csv(path)
    frame = frame.tail(n) if tail else frame.head(n)
    columns = [project.entity_key, project.event_timestamp, *project.features.all]
    rows = []
    for record in frame[columns].to_dict("records"):
        row = {}
        for name, value in record.items():
            if isinstance(value, float) and math.isnan(value):
                value = None
            elif name in project.features.numeric and value is not None:
                value = float(value)
            row[name] = value
        rows.append(row)
    return rows


def _traffic(service: LocalService, token: str, rows: list[dict[str, Any]], log: Path) -> str:
    """Send each row once, then wait (up to 30 s) until the service's inference log holds every answer."""
    before = len(read_log(log))
    replies = drive(service.url, token, rows, requests=len(rows), concurrency=8)
    ok = sum(r.status == 200 for r in replies)
    deadline = time.monotonic() + 30
    while len(read_log(log)) < before + ok and time.monotonic() < deadline:
        time.sleep(0.5)  # the log is written off the request path, in batches
    return f"{len(replies):,} requests, {ok:,} answered and logged"


def _drift(ws: Workspace, rows: int, retrained: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    outcome = drift_flow(ws, str(rows))
    result = outcome.result
    text = result.describe()
    if result.trigger:
        text += f"; retraining {result.trigger}"
    if outcome.retraining is not None:
        r = outcome.retraining
        text += f"; retraining {r.status}: {r.reason}"
        if retrained is not None:
            retrained.update(version=r.version, canary=r.canary)
    return text, [str(p) for p in (result.html, result.report) if p]


def _labels(ws: Workspace, path: Path) -> tuple[str, list[str]]:
    outcome = labels(ws, path, start=False)  # in the demo, drift is what starts the retraining
    return f"{outcome.rows:,} labels, {outcome.matched:,} joined; {outcome.quality.describe()}", [outcome.joined or ""]


def _canary(
    service: LocalService,
    token: str,
    admin: str,
    rows: list[dict[str, Any]],
    ws: Workspace,
    name: str,
    version: str,
    record: DemoRecord,
) -> tuple[str, list[str]]:
    service.admin("POST", "reload", admin).raise_for_status()
    deadline = time.monotonic() + _CANARY_SECONDS
    verdict: dict[str, Any] = {}

    def decided() -> bool:
        verdict.update(canary_verdict(ws, name, version, since=record.since))
        return bool(verdict) or time.monotonic() > deadline

    keys = [f"applicant-{i}" for i in range(200)]
    replies = drive(service.url, token, rows, requests=200_000, concurrency=8, keys=keys, stop=decided, check_every=200)
    errors = sum(r.status != 200 for r in replies)
    if not verdict:
        return f"no verdict within {_CANARY_SECONDS} s ({len(replies):,} requests); the canary keeps its weight", []
    record.canary(name, version, verdict["outcome"])
    return f"{verdict['kind']}: {verdict['why']} ({len(replies):,} requests, {errors} client errors)", []


def canary_verdict(ws: Workspace, name: str, version: str, *, since: int = 0) -> dict[str, Any]:
    """How the canary of ``name`` version ``version`` ended, from the ledger (events after ``since``):
    promoted (``model.canary_completed``), not promoted, or rolled back; empty while it runs."""
    with ws.ledger() as ledger:
        for event in ledger.latest([EventKind.CANARY_COMPLETED, EventKind.CANARY_ROLLED_BACK], limit=1_000, model=name):
            if event.seq <= since:
                break
            details = typed(event)
            if str(details.version) != version:
                continue
            if event.kind == EventKind.CANARY_COMPLETED and details.promoted:
                return {
                    "outcome": "promoted",
                    "kind": "promoted to champion",
                    "why": "every step within the canary policy",
                }
            if event.kind == EventKind.CANARY_COMPLETED:
                return {"outcome": "not promoted", "kind": "not promoted", "why": "; ".join(details.promotion)}
            return {
                "outcome": "rolled back",
                "kind": "rolled back",
                "why": "; ".join(details.reasons) or "see the ledger",
            }
    return {}
