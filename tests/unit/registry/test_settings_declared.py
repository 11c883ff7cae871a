"""Every ``CONVEYOR_*`` variable Conveyor knows is declared in ``registry/settings.py``, and only
the settings read one: a new variable read anywhere else fails here, with where it is read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import conveyor
from conveyor.registry.settings import ClientSettings, Settings, read_client_settings

PACKAGE = Path(conveyor.__file__).parent
NAME = re.compile(r"^CONVEYOR_[A-Z][A-Z0-9_]*$")


def sources() -> list[Path]:
    """The package's modules, every layer included."""
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def declared() -> set[str]:
    names = {f"CONVEYOR_{field.upper()}" for field in [*Settings.model_fields, *ClientSettings.model_fields]}
    for field in Settings.model_fields.values():
        choices = getattr(field.validation_alias, "choices", ())
        names |= {c for c in choices if isinstance(c, str) and NAME.match(c)}
    return names


def environment_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """``os.environ.get(NAME)``, ``os.environ[NAME]`` and ``os.getenv(NAME)`` with a literal name."""
    reads = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            target = ast.unparse(node.func)
            if target in ("os.environ.get", "os.getenv", "environ.get", "os.environ.pop"):
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ"):
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.startswith("CONVEYOR_"):
            reads.append((node.lineno, key.value))
    return reads


def test_only_the_settings_read_a_conveyor_variable_from_the_environment() -> None:
    settings = (PACKAGE / "registry" / "settings.py").resolve()
    elsewhere = [
        f"{path.relative_to(PACKAGE.resolve().parent)}:{line} reads {name}"
        for path in sources()
        if path != settings
        for line, name in environment_reads(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert elsewhere == [], "declare it in registry/settings.py and read it there: " + "; ".join(elsewhere)


def test_every_conveyor_variable_the_code_names_is_declared() -> None:
    named: dict[str, str] = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for word in re.findall(r"\bCONVEYOR_[A-Z][A-Z0-9_]*\b", node.value):
                    named.setdefault(word, f"{path.name}:{node.lineno}")
    undeclared = {name: where for name, where in named.items() if name not in declared()}
    assert undeclared == {}, f"named but not declared in registry/settings.py: {undeclared}"
    assert {"CONVEYOR_HOME", "CONVEYOR_SERVICE_URL", "CONVEYOR_ADMIN_KEY", "CONVEYOR_SERVICE_RUN"} <= set(named)


def test_the_client_settings_come_from_the_environment_and_the_key_is_kept_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CONVEYOR_SERVICE_URL", raising=False)
    monkeypatch.delenv("CONVEYOR_ADMIN_KEY", raising=False)
    assert read_client_settings().service_url == "http://127.0.0.1:3000"
    assert read_client_settings().admin_key is None
    monkeypatch.setenv("CONVEYOR_SERVICE_URL", "http://127.0.0.1:3999")
    monkeypatch.setenv("CONVEYOR_ADMIN_KEY", "cvk_secret")
    client = read_client_settings()
    assert client.service_url == "http://127.0.0.1:3999" and client.admin_key is not None
    assert client.admin_key.get_secret_value() == "cvk_secret" and "cvk_secret" not in repr(client)
