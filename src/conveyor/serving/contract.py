"""What a model promised at training, held to on every request: its inputs' categories and its answers' shape.

The input contract (``categories``) comes from the model's own MLmodel metadata, written by
training (each categorical column's values as seen in the training data), so it is signed with
the model. A value outside them is refused (400, naming the field and the allowed values), or,
where ``policies/serving.yaml`` says ``unknown_categories: flag``, answered, counted and flagged
in the inference log.

The output contract is checked after the model returns and before the answer counts: one answer
per row, numbers, finite; for a classifier one row of class probabilities per input row, each in
[0, 1] and summing to 1, over exactly the classes the model was trained on. The answer is then
the probability of the positive (last) class. Whatever breaks it is the model's failure.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ContractBreach", "InputContract", "check_output"]

_TOLERANCE = 1e-6
_SUM_TOLERANCE = 1e-4


class ContractBreach(ValueError):
    """A model's answer broke its output contract."""


@dataclass(frozen=True)
class InputContract:
    categories: Mapping[str, frozenset[str]] = field(default_factory=dict)
    classes: tuple[Any, ...] | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> InputContract:
        conveyor = (metadata or {}).get("conveyor") or {}
        categories = {name: frozenset(map(str, values)) for name, values in (conveyor.get("categories") or {}).items()}
        classes = conveyor.get("classes")
        return cls(categories, None if classes is None else tuple(classes))

    def unknown(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, str, str]]:
        """(row, column, value) for every categorical value the model never saw (None is not checked)."""
        found = []
        for column, allowed in self.categories.items():
            for i, row in enumerate(rows):
                value = row.get(column)
                if value is not None and value not in allowed:
                    found.append((i, column, value))
        return found

    def explain(self, row: int, column: str, value: str) -> str:
        allowed = sorted(self.categories[column])
        shown = ", ".join(repr(v) for v in allowed[:20]) + (", …" if len(allowed) > 20 else "")
        close = [v for v in allowed if v.casefold() == value.casefold()] or difflib.get_close_matches(value, allowed, 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"rows.{row}.{column}: {value[:100]!r} is not a value the model was trained on{hint}; allowed: {shown}"


def check_output(raw: Any, rows: int, task: str, classes: Sequence[Any] | None = None) -> np.ndarray:
    """The answer per row (a classifier's positive-class probability), or ``ContractBreach`` saying what is wrong."""
    try:
        values = np.asarray(raw)
    except Exception as exc:
        raise ContractBreach(f"the answer is not an array: {type(exc).__name__}") from None
    if values.dtype.kind not in "biuf":
        raise ContractBreach(f"the answer holds {values.dtype} values, not numbers")
    values = values.astype("float64", copy=False)
    if task == "classification":
        width = len(classes) if classes is not None else None
        if values.ndim != 2 or values.shape[0] != rows or values.shape[1] < 2:
            raise ContractBreach(f"expected {rows} rows of class probabilities, got an array of shape {values.shape}")
        if width is not None and values.shape[1] != width:
            raise ContractBreach(f"expected {width} class probabilities per row, got {values.shape[1]}")
        _finite(values)
        if values.min() < -_TOLERANCE or values.max() > 1 + _TOLERANCE:
            raise ContractBreach(f"probabilities outside [0, 1]: from {values.min():.4g} to {values.max():.4g}")
        sums = values.sum(axis=1)
        if np.abs(sums - 1).max() > _SUM_TOLERANCE:
            worst = sums[np.argmax(np.abs(sums - 1))]
            raise ContractBreach(f"class probabilities do not sum to 1 (a row sums to {worst:.6g})")
        return np.clip(values[:, -1], 0.0, 1.0)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.shape[0] != rows:
        raise ContractBreach(f"expected one value for each of {rows} rows, got an array of shape {values.shape}")
    _finite(values)
    return values


def _finite(values: np.ndarray) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise ContractBreach(f"{int(bad.sum())} answers are not finite numbers (NaN or infinity)")
