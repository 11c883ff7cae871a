"""Conveyor's own modules are imported at the top of a module; an import inside a function says
why on the line above its block (``# here: ...``): `conveyor --help`'s speed, a quick command that
must not load a heavy library, or a module that builds on this one."""

from __future__ import annotations

import ast
from pathlib import Path

import conveyor

PACKAGE = Path(conveyor.__file__).parent


def _ours(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "conveyor"
    return isinstance(node, ast.Import) and any(a.name.split(".")[0] == "conveyor" for a in node.names)


def unexplained(source: str) -> list[int]:
    """The lines of function-level imports of Conveyor's modules with no ``# here`` above their block."""
    lines = source.splitlines()
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        imports = [n for n in ast.walk(function) if isinstance(n, ast.Import | ast.ImportFrom) and _ours(n)]
        if not imports:
            continue
        explained = False
        for node in imports:
            start = node.lineno - 1
            while start > 0 and lines[start - 1].lstrip().startswith(("from ", "import ")):
                start -= 1
            explained |= "# here" in lines[node.lineno - 1] or (start > 0 and "# here" in lines[start - 1])
        if not explained:
            found.append(imports[0].lineno)
    return found


def test_every_import_inside_a_function_says_why() -> None:
    modules = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    assert len(modules) > 100
    bad = [f"{p.relative_to(PACKAGE)}:{line}" for p in modules for line in unexplained(p.read_text())]
    assert bad == [], "import these at the top, or say on the line above why not (# here: ...): " + ", ".join(bad)


def test_the_rule_finds_an_unexplained_import_and_accepts_an_explained_one() -> None:
    bare = "def f():\n    from conveyor.registry import ledger\n    return ledger\n"
    said = "def f():\n    # here: it builds on this module\n    from conveyor.registry import ledger\n    import os\n"
    theirs = "def f():\n    import pandas\n"
    assert unexplained(bare) == [2] and unexplained(said) == [] and unexplained(theirs) == []
