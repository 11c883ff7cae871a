"""The audit's record links, on hand-made ledgers: each link passes on a consistent record and names
what is wrong with an inconsistent one."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.registry.audit import Facts, _releases, recorded_files
from conveyor.registry.digests import bytes_digest, file_digest
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger, LedgerEvent
from conveyor.registry.verify import VerificationReport


def d(name: str) -> str:
    return bytes_digest(name.encode())


TAGS = {
    "conveyor.data_digest": d("data"),
    "conveyor.validation_digest": d("report"),
    "conveyor.training_set": d("train"),
    "conveyor.model_digest": d("model"),
    "conveyor.run_id": "run-1",
}


def record(
    tmp_path: Path, *, validated: bool = True, run_id: str = "run-1", other_data: bool = False
) -> list[LedgerEvent]:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        data = d("other data") if other_data else d("data")
        return [
            ledger.append(
                EventKind.DATASET_VERSIONED,
                outputs=[d("data")],
                details={"path": "data/x.csv", "md5": "0" * 32, "size": 3, "dvc": "untracked"},
            ),
            ledger.append(
                EventKind.DATA_VALIDATED,
                inputs={"data": data, "suite": d("suite")},
                outputs=[d("report")],
                details={
                    "success": validated,
                    "evaluated": 7,
                    "failed": 0 if validated else 2,
                    "report": "r.json",
                    "suite": "s.json",
                },
            ),
            ledger.append(
                EventKind.FEATURES_BUILT,
                inputs={"data": d("data"), "validation": d("report"), "feature_definitions": d("spec")},
                outputs=[d("train")],
                details={"rows_in": 10, "rows_out": 10, "training_set": "t.parquet"},
            ),
            ledger.append(
                EventKind.MODEL_TRAINED,
                inputs={"training_set": d("train"), "config": d("config")},
                outputs=[d("model")],
                details={"run_id": run_id, "model_id": "m-1", "estimator": "e", "train_rows": 8, "files": {}},
            ),
        ]


def test_a_consistent_record_passes_validation_features_and_training(tmp_path: Path) -> None:
    facts = Facts.of(TAGS, record(tmp_path), tmp_path)
    for link in (facts.validation(), facts.features(), facts.training()):
        assert link.ok, (link.name, link.detail)
    assert "passed 7 expectations" in facts.validation().detail


def test_a_failed_validation_is_named(tmp_path: Path) -> None:
    link = Facts.of(TAGS, record(tmp_path, validated=False), tmp_path).validation()
    assert not link.ok and "records a failed validation" in link.detail


def test_validation_of_other_data_is_named(tmp_path: Path) -> None:
    link = Facts.of(TAGS, record(tmp_path, other_data=True), tmp_path).validation()
    assert not link.ok and "validated other data" in link.detail


def test_a_training_run_the_registry_does_not_name_is_caught(tmp_path: Path) -> None:
    link = Facts.of(TAGS, record(tmp_path, run_id="run-2"), tmp_path).training()
    assert not link.ok and "run-2" in link.detail and "run-1" in link.detail


def test_the_data_link_needs_the_file_or_dvcs_copy(tmp_path: Path) -> None:
    link = Facts.of(TAGS, record(tmp_path), tmp_path).data()
    assert not link.ok and "is gone" in link.detail and "dvc pull" in link.detail


@pytest.mark.parametrize(("version", "ok"), [("1", True), ("2", False)])
def test_release_events_must_name_the_version_whose_digest_they_carry(tmp_path: Path, version: str, ok: bool) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        event = ledger.append(
            EventKind.MODEL_PROMOTED,
            inputs={"version": d("v1")},
            outputs=[d("decision")],
            details={
                "name": "m",
                "version": version,
                "target": "champion",
                "ok": True,
                "reasons": [],
                "policy": "p.yaml",
            },
        )
    link = _releases(VerificationReport("m", "1"), [event])
    assert link.ok is ok
    if not ok:
        assert f"#{event.seq} model.promoted names m version 2" in link.detail


def test_recorded_report_files_count_only_while_they_hash_to_the_output(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    report.write_text("{}")
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        event = ledger.append(
            EventKind.DATA_VALIDATED,
            inputs={"data": d("a")},
            outputs=[file_digest(report)],
            details={"success": True, "evaluated": 1, "failed": 0, "report": "r.json", "suite": "s"},
        )

    def locate(_event: LedgerEvent, _key: str, value: str) -> Path:
        return tmp_path / value

    assert recorded_files(event, locate) == {file_digest(report): report}
    report.write_text('{"changed": true}')
    assert recorded_files(event, locate) == {}
