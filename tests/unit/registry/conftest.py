"""The ledger backends every registry test runs on: SQLite, and PostgreSQL where it runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.registry.ledger import Ledger
from tests.conftest import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty ledger database: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    with postgres_database("ledger") as database:
        yield database


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    with Ledger(url, actor="tester") as opened:
        yield opened
