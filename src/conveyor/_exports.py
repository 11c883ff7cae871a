"""Each package's public names, loaded on first use: a package ``__init__`` names what it exports
and from which module, and importing the package stays cheap (``conveyor --help``, a quick
command, imports no more than it uses)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any

__all__ = ["exports"]


def exports(package: str, modules: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: each name of ``modules`` (module -> its names),
    from that module, imported when first asked for. The package's ``__all__`` lists the same
    names (a test holds the two together)."""
    found = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = found.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(module), name)

    return __getattr__
