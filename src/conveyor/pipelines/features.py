"""Features: a Feast repository built from the project config, and a point-in-time training set.

The repository (``feature_store.yaml`` plus ``definitions.py``) lives in ``<home>/feast``: a
local provider, a Parquet file source, a SQLite registry and online store (in the server profile,
a SQL registry and Redis). The training set joins each
label row (entity, event time, target) to the latest feature values at or before that time,
so no value from a label's future can leak into training.

Feast's file offline store silently drops entity rows with no feature value inside the TTL (or
returns them empty) and does not keep row order: the join is matched back on (entity, time) and
rows in and out are counted, so a row without features is reported instead of shrinking the
training set unnoticed.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from conveyor.policies.errors import DataInvalid
from conveyor.policies.project import ProjectConfig
from conveyor.registry.digests import file_digest, json_digest

__all__ = [
    "FeastStores",
    "FeatureSet",
    "build_training_set",
    "feature_spec",
    "materialize_latest",
    "open_store",
    "repo_config",
]


@dataclass(frozen=True)
class FeastStores:
    """Where Feast keeps its registry and online store: files in the repository by default; in the
    server profile, a SQL registry and Redis (``redis://host:port/db``)."""

    registry_url: str | None = None
    redis_url: str | None = None
    engine: str = "file"  # the offline store's engine for point-in-time joins: file (pandas) or duckdb


def repo_config(project: str, repo: Path, stores: FeastStores) -> dict[str, Any]:
    """``feature_store.yaml`` as data: the local provider, the file offline store, and ``stores``."""
    registry: Any = str(repo / "registry.db")
    if stores.registry_url:
        registry = {
            "registry_type": "sql",
            "path": stores.registry_url,
            "cache_ttl_seconds": 60,
            "sqlalchemy_config_kwargs": {"pool_pre_ping": True},
        }
    online: dict[str, Any] = {"type": "sqlite", "path": str(repo / "online.db")}
    if stores.redis_url:
        online = {"type": "redis", "connection_string": _feast_redis(stores.redis_url)}
    return {
        "project": project,
        "registry": registry,
        "provider": "local",
        "offline_store": {"type": stores.engine},
        "online_store": online,
        "entity_key_serialization_version": 3,
    }


def _feast_redis(url: str) -> str:
    """Feast's Redis connection string (``host:port,db=N,password=...``) for a ``redis://`` URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    text = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
    db = parts.path.strip("/")
    if db:
        text += f",db={db}"
    if parts.password:
        text += f",password={parts.password}"
    if parts.scheme == "rediss":
        text += ",ssl=true"
    return text


_DEFINITIONS = '''\
"""Feast definitions for this project, built from its Conveyor config."""

from conveyor.pipelines.features import _feast_objects
from conveyor.policies.project import load_project

entity, view = _feast_objects(load_project({config!r}), {source!r})
'''


@dataclass(frozen=True)
class FeatureSet:
    """A point-in-time correct training set and how it was made."""

    frame: pd.DataFrame
    path: Path  # Parquet copy of the training set
    digest: str
    spec_digest: str  # of the feature definitions
    rows_in: int
    rows_out: int
    dropped: int


def feature_spec(config: ProjectConfig) -> dict[str, Any]:
    """The feature definitions as data: what the repository defines, and what is hashed."""
    return {
        "project": _project_name(config),
        "entity": config.entity_key,
        "timestamp": config.event_timestamp,
        "view": _view_name(config),
        "numeric": list(config.features.numeric),
        "categorical": list(config.features.categorical),
        **({"boolean": list(config.features.boolean)} if config.features.boolean else {}),
        "ttl_days": config.feature_ttl_days,
    }


def _feast_objects(config: ProjectConfig, source_path: str | Path) -> tuple[Any, Any]:
    """The Feast entity and feature view for ``config``, reading features from ``source_path``."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, String

    entity = Entity(name=config.entity_key, join_keys=[config.entity_key], value_type=ValueType.STRING)
    source = FileSource(
        name=f"{_view_name(config)}_source", path=str(source_path), timestamp_field=config.event_timestamp
    )
    schema = [Field(name=c, dtype=Float64) for c in config.features.numbers]  # booleans as 1.0/0.0
    schema += [Field(name=c, dtype=String) for c in config.features.categorical]
    view = FeatureView(
        name=_view_name(config),
        entities=[entity],
        ttl=timedelta(days=config.feature_ttl_days),
        schema=schema,
        source=source,
        online=True,
    )
    return entity, view


def open_store(
    config: ProjectConfig, repo: Path, features: pd.DataFrame, config_file: Path, stores: FeastStores | None = None
) -> tuple[Any, Any]:
    """Write the repository and the feature source, apply the definitions, return (store, view)."""
    import yaml
    from feast import FeatureStore

    logging.getLogger("feast").setLevel(logging.WARNING)
    repo.mkdir(parents=True, exist_ok=True)
    source = repo / "data" / "features.parquet"
    source.parent.mkdir(exist_ok=True)
    _feature_frame(config, features).to_parquet(source, index=False)
    settings = repo_config(_project_name(config), repo, stores or FeastStores())
    (repo / "feature_store.yaml").write_text(
        "# Written by Conveyor from the project config and settings; `feast -c REPO plan` reads it too.\n"
        + yaml.safe_dump(settings, sort_keys=False)
    )
    (repo / "definitions.py").write_text(_DEFINITIONS.format(config=str(config_file), source=str(source)))
    store = FeatureStore(repo_path=str(repo))
    entity, view = _feast_objects(config, source)
    with _quiet():
        store.apply([entity, view])
    return store, view


def build_training_set(store: Any, view: Any, config: ProjectConfig, frame: pd.DataFrame, out_dir: Path) -> FeatureSet:
    """Point-in-time join of the label rows to the feature view; every dropped row is counted."""
    keys = [config.entity_key, config.event_timestamp]
    labels = frame[[*keys, config.target]].reset_index(drop=True)
    labels[config.entity_key] = labels[config.entity_key].astype(str)
    references = [f"{view.name}:{c}" for c in config.features.all]
    with _quiet():
        joined = store.get_historical_features(entity_df=labels, features=references).to_df()
    joined[config.event_timestamp] = pd.to_datetime(joined[config.event_timestamp], utc=True)
    # Feast does not keep order and may drop rows: match back on the keys, in the input's order.
    ordered = labels.merge(joined.drop(columns=[config.target]), on=keys, how="left", indicator=True)
    # A row Feast dropped, or returned with no feature value at all, has nothing to learn from.
    present = (ordered.pop("_merge") == "both") & ordered[list(config.features.all)].notna().any(axis=1)
    dropped = int((~present).sum())
    training = ordered.loc[present, [*keys, config.target, *config.features.all]].reset_index(drop=True)
    if training.empty:
        raise DataInvalid(
            f"The point-in-time join returned no rows ({len(labels)} label rows went in).",
            hint="Check the entity key and event timestamp, and `feature_ttl_days` in the project config.",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / "training_set.parquet.partial"
    training.to_parquet(partial, index=False)
    digest = file_digest(partial)
    path = out_dir / f"training-{digest.split(':')[1][:16]}.parquet"
    partial.replace(path)
    return FeatureSet(training, path, digest, json_digest(feature_spec(config)), len(labels), len(training), dropped)


def materialize_latest(store: Any, view: Any, frame: pd.DataFrame, config: ProjectConfig) -> int:
    """Each entity's latest feature values into the online store (what serving would look up); the
    number of entities written."""
    times = pd.to_datetime(frame[config.event_timestamp], utc=True)
    with _quiet():
        store.materialize(
            start_date=(times.min() - timedelta(seconds=1)).to_pydatetime(),
            end_date=(times.max() + timedelta(seconds=1)).to_pydatetime(),
            feature_views=[view.name],
        )
    return int(frame[config.entity_key].nunique())


def _feature_frame(config: ProjectConfig, frame: pd.DataFrame) -> pd.DataFrame:
    features = frame[[config.entity_key, config.event_timestamp, *config.features.all]].copy()
    features[config.entity_key] = features[config.entity_key].astype(str)
    for column in config.features.numbers:
        features[column] = pd.to_numeric(features[column], errors="coerce").astype("float64")
    for column in config.features.categorical:
        features[column] = features[column].astype("string").astype(object).where(features[column].notna(), None)
    return features


def _project_name(config: ProjectConfig) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in config.model_name).strip("_") or "conveyor"


def _view_name(config: ProjectConfig) -> str:
    return f"{_project_name(config)}_features"


@contextlib.contextmanager
def _quiet() -> Any:
    """Feast prints progress to stdout; Conveyor's commands print their own summary."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
