"""Conveyor: validated data in, signed and served models out, every step on the record.

The Python API is ``conveyor.Workspace`` (see ``conveyor.api``)::

    import conveyor

    ws = conveyor.Workspace.open(".")
    ws.train()

Importing this package is cheap: the API is loaded on first use, and the command line
(``conveyor.cli``) imports no heavy library until a command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.api import LedgerAudit, LineageResult, Workspace, verify_bundle

__all__ = ["LedgerAudit", "LineageResult", "Workspace", "verify_bundle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        # here: `import conveyor` stays cheap; the API loads on first use
        from conveyor import api

        return getattr(api, name)
    raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
