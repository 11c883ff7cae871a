"""Conveyor: validated data in, signed and served models out, every step on the record.

The Python API is ``conveyor.Workspace`` (see ``conveyor.api``)::

    import conveyor

    ws = conveyor.Workspace.open(".")
    ws.train()

Importing this package is cheap: the API is loaded on first use, and the command line
(``conveyor.cli``) imports no heavy library until a command runs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.api import LedgerAudit, LineageResult, Workspace, verify_bundle

__all__ = ["LedgerAudit", "LineageResult", "Workspace", "verify_bundle"]

# ``conveyor.pipelines``, ``conveyor.registry``, ...: in a checkout, links in this folder to the
# top-level folders; in the wheel, the folders themselves. A copy that keeps files but not links
# (a Bento: BentoML copies files) has the folders beside this one only: they are found there.
_here = os.path.dirname(__file__)
if not os.path.isdir(os.path.join(_here, "registry")) and os.path.isfile(
    os.path.join(_here, os.pardir, "registry", "__init__.py")
):
    __path__.append(os.path.dirname(_here))


def __getattr__(name: str) -> Any:
    if name in __all__:
        from conveyor import api

        return getattr(api, name)
    raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
