"""The service in tests: ``conveyor.demo.service`` with this checkout on the path (for ``tests.faults``)."""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.demo.service import LocalService, Reply, drive, free_port
from tests.conftest import REPO

__all__ = ["Reply", "Service", "drive", "free_port"]


@dataclass
class Service(LocalService):
    def start(self, timeout: float = 180) -> None:
        self.env = {"PYTHONPATH": str(REPO), **self.env}
        self.cwd = self.cwd or REPO
        super().start(timeout)
