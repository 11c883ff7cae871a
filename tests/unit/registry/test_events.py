"""Typed events: roles by name, details checked when written, and ledgers written before roles still read."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conveyor.policies.errors import LedgerError
from conveyor.registry.digests import bytes_digest
from conveyor.registry.events import SPECS, EventKind, input_of, inputs_by_role, typed
from conveyor.registry.ledger import Ledger
from conveyor.registry.lineage import upstream

OLD_LEDGER = (
    Path(__file__).parents[2] / "data" / "ledger-before-roles.db"
)  # written by `conveyor demo --no-loop` before roles


def d(name: str) -> str:
    return bytes_digest(name.encode())


@pytest.fixture
def old(tmp_path: Path) -> Ledger:
    copy = tmp_path / "ledger.db"
    shutil.copy(OLD_LEDGER, copy)
    with Ledger(f"sqlite:///{copy}", actor="tester") as ledger:
        yield ledger


def test_every_kind_has_a_spec() -> None:
    assert set(SPECS) == set(EventKind)


def test_a_ledger_written_before_roles_verifies_byte_for_byte(old: Ledger) -> None:
    report = old.verify_chain()
    assert report.ok and report.events == 9, report.reason
    kinds = [e.kind for e in old.iter_events()]
    assert kinds[:4] == ["dataset.versioned", "dataset.versioned", "data.validated", "features.built"]


def test_old_events_are_read_by_the_positions_written_then(old: Ledger) -> None:
    events = {e.kind: e for e in old.iter_events()}
    data = next(old.iter_events())  # the first dataset: the one trained on
    validated, built, trained = events["data.validated"], events["features.built"], events["model.trained"]
    assert validated.roles == ()
    assert input_of(validated, "data") == data.outputs[0]
    assert input_of(built, "validation") == validated.outputs[0]
    assert input_of(built, "feature_definitions") == built.inputs[2]
    assert input_of(trained, "training_set") == built.outputs[0]
    assert input_of(trained, "cause") is None  # a first training has none
    promoted = events["model.promoted"]
    assert input_of(promoted, "version") == events["model.registered"].outputs[0]
    assert typed(built).training_set.endswith(".parquet")


def test_new_events_record_their_roles_and_extend_an_old_chain(old: Ledger) -> None:
    trained = next(e for e in old.iter_events() if e.kind == "model.trained")
    event = old.append(
        EventKind.MODEL_EVALUATED,
        inputs={"model": trained.outputs[0], "training_set": trained.inputs[0]},
        outputs=[d("report")],
        details={"metrics": {"roc_auc": 0.9}, "behaviour_passed": True, "holdout_rows": 10, "report": "r.json"},
    )
    assert event.kind == "model.evaluated" and event.roles == ("model", "training_set")
    assert "roles" not in event.details and old.get(event.seq) == event  # stored beside the details, read back
    assert inputs_by_role(event) == {"model": trained.outputs[0], "training_set": trained.inputs[0]}
    assert old.verify_chain().ok
    assert event.seq in {e.seq for e in upstream(old, d("report")).events}


def test_an_absent_input_leaves_no_gap(tmp_path: Path) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        event = ledger.append(
            EventKind.DRIFT_CHECKED,
            inputs={"version": None, "reference": d("ref"), "window": d("w")},
            outputs=[d("report")],
            details={
                "model": "m",
                "version": "1",
                "status": "no_drift",
                "window": "2000 rows",
                "window_rows": 5,
                "drifted": [],
                "report": "r.json",
            },
        )
    assert event.inputs == (d("ref"), d("w"))
    assert input_of(event, "window") == d("w") and input_of(event, "version") is None


@pytest.mark.parametrize(
    ("inputs", "details", "message"),
    [
        (
            {"data": d("a"), "suite": d("b")},
            {"success": True, "evaluated": 3, "failed": 0, "report": "r", "suit": "s"},
            "no detail suit",
        ),
        (
            {"data": d("a"), "suite": d("b")},
            {"success": "maybe", "evaluated": 3, "failed": 0, "report": "r", "suite": "s"},
            "do not fit",
        ),
        (
            {"dataset": d("a")},
            {"success": True, "evaluated": 3, "failed": 0, "report": "r", "suite": "s"},
            "no input role 'dataset'",
        ),
    ],
)
def test_a_writers_mistake_is_refused_before_anything_is_written(
    tmp_path: Path, inputs: dict, details: dict, message: str
) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        with pytest.raises(LedgerError, match=message):
            ledger.append(EventKind.DATA_VALIDATED, inputs=inputs, outputs=[d("out")], details=details)
        assert ledger.verify_chain().events == 0


def test_the_roles_are_covered_by_the_hash(tmp_path: Path) -> None:
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'l.db'}"
    with Ledger(url) as ledger:
        ledger.append(EventKind.RETRAINING_SKIPPED, inputs={"trigger": d("t"), "data": d("x")}, details={"reason": "r"})
        assert ledger.verify_chain().ok
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # swap the roles, keep everything else
        conn.exec_driver_sql("""UPDATE ledger_events SET roles = '["data", "trigger"]'""")
    engine.dispose()
    with Ledger(url) as ledger:
        report = ledger.verify_chain()
    assert not report.ok and report.broken_at == 1


def test_a_rollback_keeps_its_from_and_to(tmp_path: Path) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        event = ledger.append(
            EventKind.MODEL_ROLLED_BACK,
            inputs={"from_version": d("2"), "to_version": d("1")},
            details={"name": "m", "from": "2", "to": "1"},
        )
    assert typed(event).from_ == "2" and typed(event).to == "1"
