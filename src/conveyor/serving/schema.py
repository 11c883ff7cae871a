"""Request schema from the model's signature: what a client may send, checked before any model runs.

Every input column of the MLflow signature becomes a field of ``Row``: present in every row
(missing or unknown fields are refused), ``null`` allowed where the model imputes, numbers
strictly numbers (no strings coerced, no NaN or infinity), strings strictly strings. A request
is 1 to ``max_rows`` rows and an optional routing key. A row may also carry the project's entity
key and event time (``context`` fields): not model inputs, but logged, so that labels arriving
later can be joined to the prediction they judge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, StringConstraints, create_model

__all__ = ["Column", "columns_from_mlmodel", "request_model"]

_NUMBER = Annotated[float, Strict(), AllowInfNan(False)]
_INTEGER = Annotated[int, Strict()]
_TEXT = Annotated[str, Strict(), StringConstraints(max_length=1_000)]
_BOOL = Annotated[bool, Strict()]
_TYPES = {"double": _NUMBER, "float": _NUMBER, "long": _INTEGER, "integer": _INTEGER, "string": _TEXT, "boolean": _BOOL}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # an MLflow data type name: double, float, long, integer, string, boolean


def columns_from_mlmodel(mlmodel: dict[str, Any]) -> list[Column]:
    """The named input columns of the signature in an MLmodel file's content (read without MLflow)."""
    inputs = (mlmodel.get("signature") or {}).get("inputs")
    specs = json.loads(inputs) if isinstance(inputs, str) else (inputs or [])
    columns = [Column(spec["name"], spec["type"]) for spec in specs if "name" in spec]
    unknown = sorted({c.type for c in columns} - set(_TYPES))
    if not columns or unknown:
        raise ValueError(f"the model's signature has no usable named columns (types not served: {unknown})")
    return columns


def request_model(columns: list[Column], *, max_rows: int = 1_000, context: tuple[str, ...] = ()) -> type[BaseModel]:
    """A pydantic model for ``{"rows": [...], "key": ...}`` with one strict field per column.

    ``context`` names optional fields (text or integer) a row may carry besides the model's inputs.
    """
    fields: dict[str, Any] = {c.name: (_TYPES[c.type] | None, ...) for c in columns}
    names = {c.name for c in columns}
    fields |= {name: (_TEXT | _INTEGER | None, None) for name in context if name not in names}
    row = create_model("Row", __config__=ConfigDict(extra="forbid", frozen=True), **fields)
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        rows=(list[row], Field(min_length=1, max_length=max_rows)),
        key=(Annotated[str, StringConstraints(max_length=200)] | None, None),
    )
