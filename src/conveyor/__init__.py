"""Conveyor: validated data in, signed and served models out, every step on the record.

The Python API is ``conveyor.Workspace`` (see ``conveyor.api``)::

    import conveyor

    ws = conveyor.Workspace.open(".")
    ws.train()

Importing this package is cheap: the API is loaded on first use, and the command line
(``conveyor.cli``) imports no heavy library until a command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor._exports import exports as _exports

if TYPE_CHECKING:
    from conveyor.api import LedgerAudit, LineageResult, Workspace, verify_bundle

__all__ = [
    "LedgerAudit",
    "LineageResult",
    "Workspace",
    "verify_bundle",
]

__getattr__ = _exports(
    __name__,
    {
        "conveyor.api": ["LedgerAudit", "LineageResult", "Workspace", "verify_bundle"],
    },
)
