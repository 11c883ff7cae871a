"""Release decisions' facts and the moves the registry refuses, on a real (empty) MLflow store."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from conveyor.policies.errors import NotFound, RegistryError
from conveyor.registry.events import EventKind
from conveyor.registry.release import _clean_tree, _validation_passed, promote, rollback
from conveyor.registry.workspace import Workspace


@pytest.fixture
def ws(bare_project: Path) -> Workspace:
    return Workspace.open(bare_project, home=str(bare_project / ".conveyor"))


def statement(dirty: object) -> dict:
    content = base64.b64encode(json.dumps(dirty).encode()).decode()
    return {"predicate": {"runDetails": {"byproducts": [{"name": "code_dirty", "content": content}]}}}


@pytest.mark.parametrize(("dirty", "clean"), [(False, True), (True, False), (None, None)])
def test_a_clean_tree_is_read_from_the_provenance(dirty: object, clean: bool | None) -> None:
    assert _clean_tree(statement(dirty)) is clean
    assert _clean_tree(None) is None and _clean_tree({"predicate": {"runDetails": {}}}) is None


def test_validation_passed_only_when_the_last_record_of_that_report_says_so(ws: Workspace) -> None:
    from conveyor.registry.digests import bytes_digest

    report = bytes_digest(b"report")
    with ws.ledger() as ledger:
        assert not _validation_passed(ledger, report) and not _validation_passed(ledger, None)
        ledger.append(
            EventKind.DATA_VALIDATED,
            inputs={"data": bytes_digest(b"d")},
            outputs=[report],
            details={"success": True, "evaluated": 3, "failed": 0, "report": "r", "suite": "s"},
        )
        assert _validation_passed(ledger, report)


def test_a_rollback_with_no_former_champion_is_refused_and_recorded_nowhere(ws: Workspace) -> None:
    with pytest.raises(NotFound, match="no previous champion"):
        rollback(ws, "loan-default")
    with ws.ledger() as ledger:
        assert ledger.verify_chain().events == 0


def test_promoting_what_the_registry_lacks_is_a_usage_error(ws: Workspace) -> None:
    with pytest.raises(RegistryError, match="has no loan-default/7"):
        promote(ws, "loan-default/7", "champion")
