"""The public surface, held (after httpx's ``tests/test_exported_members.py``): each package exports
its public names, ``__all__`` lists exactly those, every module says what it makes public, and
``conveyor.Workspace`` shows the verbs, not the plumbing."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import conveyor

PACKAGE = Path(conveyor.__file__).parent
PACKAGES = sorted(
    ".".join(("conveyor", *p.parent.relative_to(PACKAGE).parts))
    for p in PACKAGE.rglob("__init__.py")
    if "__pycache__" not in p.parts
)
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts and p.name != "__main__.py")


def _literal_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
    return None


def _imported(tree: ast.Module) -> set[str]:
    """The names a package's ``__init__`` imports from its own modules (for type checkers or at once)."""
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("conveyor.")
            and node.module != "conveyor._exports"
        ):
            found |= {a.asname or a.name for a in node.names}
    return found


def test_every_package_is_found() -> None:
    assert {"conveyor", "conveyor.registry", "conveyor.serving", "conveyor.pipelines.llm"} <= set(PACKAGES)


@pytest.mark.parametrize("name", PACKAGES)
def test_a_package_exports_its_public_names_and_all_lists_exactly_them(name: str) -> None:
    package = importlib.import_module(name)
    tree = ast.parse(Path(package.__file__ or "").read_text())
    listed = _literal_all(tree)
    assert listed is not None, f"{name} has no literal __all__"
    assert listed, f"{name} exports nothing"
    assert listed == sorted(set(listed)), f"{name}.__all__ is not sorted, or repeats a name"
    made = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    made |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    made = {n for n in made if not n.startswith("_")}
    assert made <= set(listed), f"{name} makes public names it does not export: {made - set(listed)}"
    if "_exports" in vars(package):  # exported on first use: type checkers are shown the same names
        assert set(listed) == _imported(tree), f"{name}.__all__ and the names it shows type checkers differ"
    for public in set(listed) - made:  # the rest come from the package's modules, public there
        found = getattr(package, public)
        home = importlib.import_module(getattr(found, "__module__", name))
        assert public in getattr(home, "__all__", ()), f"{name}.{public} is not public in {home.__name__}"
        assert getattr(home, public) is found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_lists_what_it_makes_public(path: Path) -> None:
    tree = ast.parse(path.read_text())
    listed = _literal_all(tree)
    assert listed is not None, "no __all__"
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    if path.name != "__init__.py":
        assert set(listed) <= bound | defined, (
            f"named in __all__ but not in the module: {set(listed) - bound - defined}"
        )
    public = {n for n in defined if not n.startswith("_")}
    assert public <= set(listed), f"public but not in __all__ (add it, or make it private): {public - set(listed)}"


def test_an_unknown_name_is_an_attribute_error() -> None:
    import conveyor.registry

    with pytest.raises(AttributeError, match="has no attribute 'Nothing'"):
        conveyor.registry.Nothing  # noqa: B018


def test_the_python_api_workspace_shows_the_verbs_not_the_plumbing() -> None:
    shown = {n for n in dir(conveyor.Workspace) if not n.startswith("_")}
    verbs = {
        "validate", "train", "build_release", "check_llm", "check_knowledge", "add_feedback", "accept_feedback",
        "ask", "repair_weights", "verify", "promote", "rollback", "lineage", "status", "audit", "audit_ledger",
        "seal", "drift", "add_labels",
    }  # fmt: skip
    about = {"open", "stores", "root", "project_file", "home", "model_name"}  # what a verb's caller needs to know
    assert shown == verbs | about
    plumbing = {n for n in dir(conveyor.registry.Workspace) if not n.startswith("_")}
    assert {"ledger", "mlflow", "prepare", "policy", "bind_mlflow", "params"} <= plumbing
    assert not (plumbing - about) & shown, "the registry's plumbing shows through"
