"""Reading a policy file into its typed model: any mistake is a ``PolicyInvalid`` naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from conveyor.policies.errors import ConveyorError, PolicyInvalid

__all__ = ["load_policy", "read_yaml_mapping"]

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
