"""The bundled demo and the harness that runs a local service: apart from the stages they drive.

``data`` generates the demo's files, ``prepare`` versions them, ``loop`` runs the closed loop on a
served champion, ``service`` starts, drives and stops a local ``conveyor serve`` (for the demo, the
tests and the benchmarks), ``run`` is ``conveyor demo``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor._exports import exports as _exports

if TYPE_CHECKING:
    from conveyor.demo.run import run_demo, run_llm_only
    from conveyor.demo.service import LocalService, drive

__all__ = [
    "LocalService",
    "drive",
    "run_demo",
    "run_llm_only",
]

__getattr__ = _exports(
    __name__,
    {
        "conveyor.demo.run": ["run_demo", "run_llm_only"],
        "conveyor.demo.service": ["LocalService", "drive"],
    },
)
