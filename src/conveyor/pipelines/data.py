"""Reading a project's data file: CSV or Parquet in, a DataFrame with a UTC event time out.

Only what cannot be expressed as an expectation is refused here (an unreadable, empty or
non-UTF-8 file, unparseable timestamps); everything else is the validation stage's job, so
that its report names it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from conveyor.policies.errors import DataInvalid
from conveyor.policies.project import ProjectConfig, read_columns

__all__ = ["read_data", "read_table"]


def read_data(path: Path, config: ProjectConfig) -> pd.DataFrame:
    """The columns ``config`` names from ``path``, with the event timestamp parsed to UTC and
    categorical-dtype columns as their plain values (what the model and the suite see)."""
    if not path.is_file():
        raise DataInvalid(
            f"No data file at {path}.",
            hint="Check `data` in the project config or --data; `dvc pull` (or `conveyor demo`) "
            "fetches the demo's data.",
        )
    config.check_columns(read_columns(path))  # also refuses empty and non-UTF-8 files
    frame = read_table(path, list(config.columns))
    frame[config.event_timestamp] = _parse_times(frame[config.event_timestamp], config.event_timestamp, path)
    return frame


def read_table(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """``columns`` (default: all) of a CSV or Parquet file, in that order, categorical-dtype columns
    (Parquet dictionaries) as their plain values; an unreadable file is a ``DataInvalid``."""
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            frame = pd.read_parquet(path, columns=columns)
        else:
            frame = pd.read_csv(path, usecols=columns, encoding="utf-8", low_memory=False)
    except UnicodeDecodeError:
        raise DataInvalid(
            f"{path} is not UTF-8 text past its header.", hint="Re-export the file as UTF-8 CSV."
        ) from None
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataInvalid(
            f"Cannot parse {path}: {detail}.", hint="Check the file is well-formed CSV or Parquet."
        ) from None
    except Exception as exc:  # pyarrow's own errors for a damaged Parquet file
        raise DataInvalid(f"Cannot read {path}: {exc}.", hint="Check the file is intact.") from None
    if columns is not None:
        frame = frame[columns]
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            categories = frame[column].cat.categories.dtype
            frame[column] = frame[column].astype("float64" if pd.api.types.is_numeric_dtype(categories) else object)
    return frame


def _parse_times(values: pd.Series, column: str, path: Path) -> pd.Series:
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    bad = parsed.isna() & values.notna()
    if bad.any():
        examples = ", ".join(repr(v) for v in values[bad].astype(str).unique()[:3])
        raise DataInvalid(
            f"{int(bad.sum())} value(s) of `{column}` in {path} are not timestamps, e.g. {examples}.",
            hint="Use ISO 8601 times such as 2026-01-31T12:00:00Z.",
        )
    return parsed
