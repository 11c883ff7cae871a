"""Reading a policy file into its typed model: any mistake is a ``PolicyInvalid`` naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from policies.errors import PolicyInvalid

__all__ = ["load_policy"]

Model = TypeVar("Model", bound=BaseModel)


def load_policy(path: Path, model: type[Model]) -> Model:
    """Parse ``path`` (YAML) as ``model``; never falls back to defaults for a broken file."""
    import yaml

    if not path.is_file():
        raise PolicyInvalid(f"No policy file at {path}.", hint="Restore it from the repository (policies/*.yaml).")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PolicyInvalid(f"{path} is not valid YAML: {exc}".replace("\n", " "), hint="Fix the syntax.") from None
    if not isinstance(document, dict):
        raise PolicyInvalid(f"{path} must be a YAML mapping.", hint="Compare it with the repository's version.")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"`{'.'.join(map(str, e['loc'])) or '(top level)'}`: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise PolicyInvalid(f"{path} is not a valid policy: {problems}.", hint="Fix the field(s) named; no default is assumed.") from None
