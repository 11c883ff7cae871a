"""Reading a policy file or a project config into its typed model: any mistake is a
``PolicyInvalid`` or a ``ConfigInvalid`` naming the field."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from conveyor.policies.errors import ConfigInvalid, ConveyorError, PolicyInvalid

__all__ = ["load_config", "load_policy", "read_yaml_mapping"]

Model = TypeVar("Model", bound=BaseModel)


def read_yaml_mapping(path: Path, error: type[ConveyorError], *, missing_hint: str, example: str) -> dict[str, Any]:
    """The YAML mapping in ``path``; a missing file, bad syntax or another shape raises ``error``."""
    import yaml

    if not path.is_file():
        raise error(f"No file at {path}.", hint=missing_hint)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid YAML: {exc}".replace("\n", " "), hint="Fix the syntax.") from None
    if not isinstance(document, dict):
        raise error(f"{path} must be a YAML mapping of keys to values.", hint=f"Compare it with {example}.")
    return document


def load_policy(path: Path, model: type[Model]) -> Model:
    """Parse ``path`` (YAML) as ``model``; never falls back to defaults for a broken file."""
    document = read_yaml_mapping(
        path,
        PolicyInvalid,
        missing_hint="Restore it from the repository (policies/*.yaml).",
        example="the repository's version",
    )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"`{'.'.join(map(str, e['loc'])) or '(top level)'}`: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise PolicyInvalid(
            f"{path} is not a valid policy: {problems}.", hint="Fix the field(s) named; no default is assumed."
        ) from None


def load_config(
    path: Path,
    model: type[Model],
    *,
    what: str,
    example: str,
    missing_hint: str,
    known: Collection[str] = (),
    hint: Callable[[ValidationError], str] | None = None,
) -> Model:
    """Parse the project config ``path`` as ``model`` (its ``source`` the file): a mistake is a
    ``ConfigInvalid`` naming each field, an unknown key with the key it may mean (the model's
    fields, and ``known``: nested ones), and ``hint``'s advice for the kinds of mistake found
    (by default: compare with ``example``)."""
    keys = set(model.model_fields) - {"source"} | set(known)
    document = read_yaml_mapping(path, ConfigInvalid, example=example, missing_hint=missing_hint)
    try:
        return model.model_validate({**document, "source": path})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "(top level)"
            kind, message = error["type"], error["msg"]
            if kind == "missing":
                problems.append(f"`{where}` is missing")
            elif kind == "extra_forbidden":
                close = difflib.get_close_matches(str(error["loc"][-1]), sorted(keys), n=1)
                problems.append(f"`{where}` is not a known key" + (f" (did you mean `{close[0]}`?)" if close else ""))
            else:
                got = error.get("input")
                shown = f" (got {got!r})" if not isinstance(got, dict | list) and got is not None else ""
                problems.append(f"`{where}`: {message.removeprefix('Value error, ')}{shown}")
        advice = hint(exc) if hint else f"Fix the field(s) named; compare with {example}."
        raise ConfigInvalid(f"{path} is not a valid {what}: " + "; ".join(problems) + ".", hint=advice) from None
