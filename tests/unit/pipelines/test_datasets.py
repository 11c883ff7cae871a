"""Versioning data: one ledger record per content, and DVC's record is the version."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.pipelines.datasets import relative_to_root, version_dataset
from conveyor.policies.errors import DataInvalid
from conveyor.registry.ledger import Ledger


def test_a_dataset_is_recorded_once_by_content(tmp_path: Path, loans: Path) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        first = version_dataset(loans, ledger, root=loans.parent)
        again = version_dataset(loans, ledger, root=loans.parent)
        assert first.newly_recorded and not again.newly_recorded and again.event == first.event
        assert ledger.get(first.event).details["path"] == "loans.csv"
    assert relative_to_root(Path("/elsewhere/x.csv"), tmp_path) == "/elsewhere/x.csv"


def test_data_that_differs_from_its_dvc_record_is_refused(tmp_path: Path, loans: Path) -> None:
    copy = tmp_path / "loans.csv"
    copy.write_bytes(loans.read_bytes())
    (tmp_path / "loans.csv.dvc").write_text("outs:\n- md5: 00000000000000000000000000000000\n  path: loans.csv\n")
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger, pytest.raises(DataInvalid, match="changed since DVC"):
        version_dataset(copy, ledger, root=tmp_path)
