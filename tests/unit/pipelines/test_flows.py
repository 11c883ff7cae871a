"""The one flow skeleton (``pipelines.flows``) and the one home for triggers (``pipelines.triggers``),
on a real ledger: a stage's records go in, a refusal is raised once it is on the record, nothing
after it runs; a run goes where the Workspace says; a trigger is claimed once."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conveyor.monitoring.trigger import Breach
from conveyor.pipelines import triggers
from conveyor.pipelines.flows import Record, Recorded, Stages, reporting_stages, run_as_configured
from conveyor.policies.errors import GateFailed, NotFound, PolicyInvalid
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger
from tests.conftest import REPO, open_workspace


@pytest.fixture
def ws(tmp_path: Path) -> Any:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "conveyor.yaml", root / "conveyor.yaml")
    shutil.copytree(REPO / "policies", root / "policies")
    return open_workspace(root, tmp_path / "home")


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", actor="tester") as opened:
        yield opened


def _validated(digest: str) -> Record:
    details = {"success": True, "evaluated": 1, "failed": 0, "report": "r.json", "suite": "s.json"}
    return Record(EventKind.DATA_VALIDATED, {"data": digest}, [digest], details)


def test_a_stage_s_records_go_to_the_ledger_and_its_result_on(ledger: Ledger) -> None:
    stages = Stages(ledger)
    digest = "sha256:" + "a" * 64
    assert stages("validate", lambda n: Recorded(n * 2, (_validated(digest),)), 21) == 42
    assert stages("plain", lambda: "no records") == "no records"  # a stage that records itself, or nothing
    (event,) = [ledger.get(s) for s in range(1, ledger.count() + 1)]
    assert event.kind == EventKind.DATA_VALIDATED and list(event.outputs) == [digest]
    assert set(stages.seconds) == {"validate", "plain"}


def test_a_refusal_is_raised_once_its_record_is_in_the_ledger_and_nothing_after_runs(ledger: Ledger) -> None:
    stages = Stages(ledger)
    ran = []
    refusal = GateFailed("The model failed 1 behavioural check(s).", hint="Nothing was signed.")
    with pytest.raises(GateFailed, match="behavioural"):
        stages("evaluate", lambda: Recorded("evaluation", (_validated("sha256:" + "b" * 64),), refusal))
        ran.append("sign")
    assert ran == [] and ledger.count() == 1, "the refusal is on the record"


def test_each_stage_runs_through_the_runner_and_is_announced(ledger: Ledger) -> None:
    through: list[str] = []

    def runner(name: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        through.append(name)
        return function(*args, **kwargs)

    told: list[tuple[str, int, int]] = []
    with reporting_stages(lambda *stage: told.append(stage)):
        stages = Stages(ledger, runner, ("read", "train"))
    stages("read", lambda path, *, rows: f"{rows} rows of {path}", "data.csv", rows=3)
    stages("train", lambda: Recorded("model"))
    assert through == ["read", "train"] and told == [("read", 1, 2), ("train", 2, 2)]


def test_a_run_stays_in_this_process_unless_the_workspace_uses_prefect(ws: Any) -> None:
    assert not ws.uses_prefect
    assert run_as_configured(ws, lambda: "here", flow="no-such-flow", parameters={}) == "here"


def _breach(ws: Any, since: datetime) -> Breach:
    return Breach("drift", ws.model_name, "1", since, since + timedelta(hours=1), "sha256:" + "c" * 64, "drifted")


def test_a_trigger_is_claimed_once_and_its_end_recorded(ws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triggers, "version_digest", lambda *_: None)  # no registry here
    now = datetime.now(UTC)
    breach = _breach(ws, now - timedelta(hours=2))
    with ws.ledger() as ledger:
        with pytest.raises(NotFound, match="No trigger"):
            triggers.claim(ws, ledger, "sha256:" + "d" * 64, ws.model_name)
        decision = triggers.decide(breach, [], ws.drift_policy(), now, start=True, flag="retrain")
        assert decision.start
        trigger = triggers.record_trigger(ws, ledger, breach, decision).outputs[0]
        assert triggers.claim(ws, ledger, trigger, ws.model_name) is None
        again = triggers.claim(ws, ledger, trigger, ws.model_name)
        assert again and "already started" in again
        outcome = triggers.TriggerOutcome("completed", trigger, "made the canary", "2", True)
        triggers.completed(ledger, outcome, None, reasons=["ok"], data="data/loans.csv")
        kinds = [ledger.get(s).kind for s in range(1, ledger.count() + 1)]
        assert kinds == [EventKind.RETRAINING_TRIGGERED, EventKind.RETRAINING_STARTED, EventKind.RETRAINING_COMPLETED]
        past = triggers.past_triggers(ledger, ws.model_name)
        later = triggers.decide(
            _breach(ws, now), past, ws.drift_policy(), now + timedelta(minutes=1), start=True, flag="x"
        )
        assert not later.start, "the cooldown holds the next one"


def test_asked_not_to_start_says_which_flag(ws: Any) -> None:
    now = datetime.now(UTC)
    decision = triggers.decide(_breach(ws, now), [], ws.drift_policy(), now, start=False, flag="act (--no-action)")
    assert not decision.start and decision.reason.startswith("asked not to act (--no-action); ")


def test_a_bad_window_is_refused_by_name() -> None:
    assert triggers.window_of("30m") is not None
    with pytest.raises(PolicyInvalid, match="Bad window"):
        triggers.window_of("soon")
    assert triggers.moment("2026-01-01T00:00:00").tzinfo is not None
