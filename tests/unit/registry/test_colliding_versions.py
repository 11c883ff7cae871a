"""Two models in one ledger whose version numbers collide: every lookup of a model's record finds
that model's events, never the other's "version 2", however many of the other's lie between."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conveyor.demo.loop import canary_verdict
from conveyor.demo.record import DemoRecord, RecordDisagrees
from conveyor.monitoring.costs import cost_report
from conveyor.monitoring.trigger import Breach, decide_trigger
from conveyor.pipelines.llm.loop import _feedback_counts
from conveyor.pipelines.triggers import past_triggers
from conveyor.policies.promotion import Decision
from conveyor.registry.digests import bytes_digest
from conveyor.registry.events import EventKind
from conveyor.registry.inference_log import InferenceLog, LlmLogEntry
from conveyor.registry.ledger import Draft, Ledger, ledger_time
from conveyor.registry.lookup import serving_at
from conveyor.registry.release import _after_rollback
from conveyor.registry.status import model_status
from conveyor.registry.workspace import Workspace
from conveyor.serving.canary import CanaryController
from conveyor.serving.router import Router
from conveyor.serving.shared import open_shared_state
from tests.unit.serving.test_canary_controller import POLICY

T0 = datetime(2026, 11, 1, tzinfo=UTC)
FLOOD = 1_200  # more of the other model's events than any single page of the ledger holds


def d(text: str) -> str:
    return bytes_digest(text.encode())


@pytest.fixture
def ws(bare_project: Path) -> Workspace:
    return Workspace.open(bare_project, home=str(bare_project / ".conveyor"))


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", actor="tester") as opened:
        yield opened


def canary_end(ledger: Ledger, name: str, version: str, *, promoted: bool, at: datetime = T0) -> int:
    details = {"name": name, "version": version, "promoted": promoted, "analysis": ["fine"], "promotion": []}
    return ledger.append_many(
        [Draft(EventKind.CANARY_COMPLETED.value, (d(f"{name}/{version}"),), (), details, time=ledger_time(at))]
    )[0].seq


def flood(ledger: Ledger, kind: EventKind, details: dict, inputs: tuple[str, ...] = ()) -> None:
    ledger.append_many([Draft(kind.value, inputs or (d(f"flood{i}"),), (), details) for i in range(FLOOD)])


def test_the_newest_event_of_a_model_is_found_past_a_flood_of_anothers(ledger: Ledger) -> None:
    mine = canary_end(ledger, "a", "2", promoted=True)
    flood(
        ledger,
        EventKind.CANARY_COMPLETED,
        {"name": "b", "version": "2", "promoted": False, "analysis": [], "promotion": ["no"]},
    )
    found = ledger.latest([EventKind.CANARY_COMPLETED], limit=1, model="a")
    assert [e.seq for e in found] == [mine]
    assert len(ledger.latest([EventKind.CANARY_COMPLETED], limit=5, model="b")) == 5
    assert ledger.latest([EventKind.CANARY_COMPLETED], limit=1, model="c") == []


def test_status_reads_its_own_models_verdicts(ws: Workspace) -> None:
    client = ws.mlflow()
    for name in ("a", "b"):
        client.create_registered_model(name)
        for _ in range(2):
            client.create_model_version(name, source=str(ws.home))
    with ws.ledger() as ledger:
        canary_end(ledger, "a", "2", promoted=True)
        flood(
            ledger,
            EventKind.CANARY_COMPLETED,
            {"name": "b", "version": "2", "promoted": False, "analysis": [], "promotion": ["worse"]},
        )
    status = model_status(ws, "a")
    assert status["canary"]["last_verdict"]["outcome"] == "promoted"
    assert model_status(ws, "b")["canary"]["last_verdict"]["outcome"] == "cleared, not promoted"


def test_lineage_serving_at_keeps_a_canary_whose_namesake_version_of_another_model_ended(ledger: Ledger) -> None:
    def deploy(name: str, version: str, role: str, at: datetime) -> None:
        details = {"name": name, "version": version, "role": role, "at": ledger_time(at), "instance": "i"}
        ledger.append_many(
            [
                Draft(
                    EventKind.MODEL_DEPLOYED.value,
                    (d(f"{name}{version}"),),
                    (d(f"dep-{name}{version}{role}"),),
                    details,
                    time=ledger_time(at),
                )
            ]
        )

    deploy("a", "1", "champion", T0)
    deploy("a", "2", "canary", T0 + timedelta(minutes=10))
    canary_end(ledger, "b", "2", promoted=False, at=T0 + timedelta(minutes=20))  # b's canary v2, not a's
    found = serving_at(ledger, T0 + timedelta(minutes=30), "a")
    assert set(found.digests) == {d("dep-a1champion"), d("dep-a2canary")}


def test_retraining_cooldown_counts_only_the_models_own_triggers(ledger: Ledger, ws: Workspace) -> None:
    window = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat()}
    trigger = {"cause": "drift", "model": "b", "champion": "1", **window, "evidence": d("report")}
    ledger.append_many(
        [
            Draft(EventKind.RETRAINING_TRIGGERED.value, (d("report"), d("b1")), (d(f"trigger{i}"),), trigger)
            for i in range(FLOOD)
        ]
    )
    assert past_triggers(ledger, "a") == []
    assert past_triggers(ledger, "b")  # the newest of its own (a cooldown needs no more)
    breach = Breach("drift", "a", "1", T0, T0 + timedelta(hours=1), d("report"), "drift")
    decision = decide_trigger(breach, past_triggers(ledger, "a"), ws.drift_policy(), T0 + timedelta(hours=2))
    assert decision.start, decision.reason


def test_a_canary_rollback_of_another_models_version_does_not_block_a_promotion(ledger: Ledger) -> None:
    details = {"name": "b", "version": "2", "reasons": ["slow"]}
    ledger.append(EventKind.CANARY_ROLLED_BACK, inputs={"version": d("b2")}, details=details)
    decision = _after_rollback(ledger, "a", "2", Decision(True, ["fine"]), None)
    assert decision.ok, decision.reasons
    refused = _after_rollback(ledger, "b", "2", Decision(True, ["fine"]), None)
    assert not refused.ok and "its canary was rolled back" in refused.reasons[-1]


def test_canary_controllers_of_two_models_on_one_run_keep_their_own_rows(tmp_path: Path) -> None:
    states = {name: open_shared_state(tmp_path, "shared-run", name) for name in ("a", "b")}
    try:
        controllers = {}
        for name, state in states.items():
            made = CanaryController(state, Router(0, seed=1), POLICY, on_promote=print, on_rollback=print)
            made.serving = "2"
            controllers[name] = made
        controllers["b"].start("2")
        assert controllers["b"].router.weight > 0
        assert controllers["a"].refresh().state != "running" and controllers["a"].router.weight == 0
    finally:
        for state in states.values():
            state.close()


def test_cost_report_by_version_keeps_two_models_apart(tmp_path: Path) -> None:
    for name, tokens in (("a", 10), ("b", 1_000)):
        with InferenceLog(tmp_path / name) as log:
            log.record(
                LlmLogEntry(
                    f"req-{name}", T0, name, "2", "champion", None, None, None, "t", "k", "chat", False,
                    tokens, 1, 0.001 * tokens, 5.0, 9.0, False, "ok", "stop",
                )
            )  # fmt: skip
    rows = {(r["model"], r["version"]): r["prompt_tokens"] for r in cost_report(tmp_path, by="version").rows}
    assert rows == {("a", "2"): 10, ("b", "2"): 1_000}


def test_feedback_counts_are_the_models_own(ledger: Ledger) -> None:
    for name, negative in (("a", 1), ("b", 5)):
        per_version = {"2": {"ratings": 5, "negative": negative}}
        details = {
            "model": name,
            "path": "f",
            "rows": 5,
            "matched": 5,
            "negative": negative,
            "per_version": per_version,
        }
        ledger.append(EventKind.FEEDBACK_ADDED, inputs={"feedback": d(f"fb-{name}")}, details=details)
    assert _feedback_counts(ledger, "a", "2", None) == (5, 1)
    assert _feedback_counts(ledger, "b", "2", None) == (5, 5)


def test_the_demo_reads_its_own_models_canary_and_refuses_anothers(ws: Workspace) -> None:
    from conveyor.api import Workspace as Api

    record = DemoRecord.start(ws)
    with ws.ledger() as ledger:
        canary_end(ledger, "loan-default", "2", promoted=True)  # the tabular model's canary v2
    assert canary_verdict(ws, "conveyor-assistant", "2", since=record.since) == {}
    assert canary_verdict(ws, "loan-default", "2", since=record.since)["outcome"] == "promoted"
    record.canary("conveyor-assistant", "2", "promoted")  # what the demo once printed
    with pytest.raises(RecordDisagrees, match="conveyor-assistant v2 canary promoted: the ledger has no"):
        record.check(Api(ws))


def test_status_says_when_what_a_service_loaded_is_not_what_the_alias_names(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from conveyor.cli import app

    client = ws.mlflow()
    client.create_registered_model("a")
    for _ in range(2):
        client.create_model_version("a", source=str(ws.home))
    client.set_registered_model_alias("a", "champion", "2")
    with ws.ledger() as ledger:
        details = {"name": "a", "version": "1", "role": "champion", "at": ledger_time(T0), "instance": "i"}
        ledger.append_many([Draft(EventKind.MODEL_DEPLOYED.value, (d("a1"),), (d("dep-a1"),), details)])
    monkeypatch.setenv("CONVEYOR_HOME", str(ws.home))
    shown = CliRunner().invoke(app, ["--config", str(ws.project_file), "status", "a"])
    assert shown.exit_code == 0, shown.output
    assert "versions  1, 2 (champion)" in shown.stdout
    assert "champion v1 at" in shown.stdout and "before @champion moved to v2" in shown.stdout
