"""What verification, audits and lineage read from the model registry, behind one small interface.

``registry_view(tracking_uri)`` gives a ``RegistryView``: resolve ``MODEL/VERSION`` or
``MODEL@ALIAS``, read a version's tags, fetch its files. Two implementations answer alike:

- ``MlflowView``, MLflow's own client: any tracking URI (a server, a database).
- ``SqlView``, a read-only reader of MLflow's own database tables, for the embedded stores
  (SQLite, PostgreSQL) with file artifacts. Importing MLflow costs ~5 s on this kind of machine;
  a verify, an audit or a lineage query needs three reads and a copy. It is used only when the
  database's schema revision is the one this MLflow version writes (``KNOWN_REVISIONS``); any
  other store, revision or artifact location goes through ``MlflowView``. Writes (registering,
  moving aliases) always go through MLflow's client.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from conveyor.policies.errors import NotFound, RegistryError
from conveyor.registry.models import fetch_model

__all__ = ["KNOWN_REVISIONS", "MlflowView", "RegistryView", "SqlView", "registry_view"]

# MLflow's database schema revisions (alembic) whose registry tables SqlView reads: mlflow 3.17's head.
KNOWN_REVISIONS = frozenset({"dc11669786a5"})


class RegistryView(Protocol):
    """The registry as verification reads it."""

    def resolve(self, ref: str) -> tuple[str, str]:
        """The (name, version) ``MODEL/VERSION`` or ``MODEL@ALIAS`` names; ``NotFound`` if none."""
        ...

    def tags(self, name: str, version: str) -> dict[str, str]: ...

    def fetch(self, name: str, version: str, destination: Path) -> Path:
        """The version's files, copied into ``destination`` (made if need be); returns that folder."""
        ...


def _not_found(ref: str) -> NotFound:
    return NotFound(f"The registry has no {ref}.", hint="List versions in the MLflow UI, or check the name and alias.")


class MlflowView:
    """MLflow's client: every kind of tracking URI."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def resolve(self, ref: str) -> tuple[str, str]:
        # here: registry.verify builds on this module
        from conveyor.registry.verify import resolve

        return resolve(self.client, ref)

    def tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, version).tags)

    def fetch(self, name: str, version: str, destination: Path) -> Path:

        # The version's artifact location, not models:/ (MLflow 3.17 resolves models:/ against its
        # process-wide registry, whatever URI is passed); its files are moved up into ``destination``.
        location = self.client.get_model_version_download_uri(name, version)
        scratch = destination / ".download"
        fetched = fetch_model(location, scratch, tracking_uri=self.client.tracking_uri)
        for item in fetched.iterdir():
            shutil.move(str(item), destination / item.name)
        shutil.rmtree(scratch, ignore_errors=True)
        return destination


@dataclass
class SqlView:
    """MLflow's registry tables, read directly (see the module docstring for when)."""

    engine: Any  # sqlalchemy.Engine

    @classmethod
    def open(cls, tracking_uri: str) -> SqlView | None:
        """A reader for ``tracking_uri``, or None when it is not a database this reader knows."""
        import sqlalchemy as sa

        if not tracking_uri.startswith(("sqlite:///", "postgresql")):
            return None
        if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
            return None
        engine = sa.create_engine(tracking_uri)
        try:
            with engine.connect() as conn:
                revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        except sa.exc.SQLAlchemyError:
            revision = None
        if revision not in KNOWN_REVISIONS:
            engine.dispose()
            return None
        return cls(engine)

    def _rows(self, sql: str, **params: Any) -> list[Any]:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())

    def _one(self, sql: str, **params: Any) -> Any:
        rows = self._rows(sql, **params)
        return rows[0] if rows else None

    def resolve(self, ref: str) -> tuple[str, str]:
        # here: registry.verify builds on this module
        from conveyor.registry.verify import parse_ref

        name, version, alias = parse_ref(ref)
        if alias:
            row = self._one(
                "SELECT version FROM registered_model_aliases WHERE name = :name AND alias = :alias",
                name=name,
                alias=alias,
            )
        else:
            row = self._one(
                "SELECT version FROM model_versions WHERE name = :name AND version = :version"
                " AND current_stage != 'Deleted_Internal'",
                name=name,
                version=int(str(version)),
            )
        if row is None:
            raise _not_found(ref)
        return name, str(row[0])

    def tags(self, name: str, version: str) -> dict[str, str]:
        rows = self._rows(
            "SELECT key, value FROM model_version_tags WHERE name = :name AND version = :version",
            name=name,
            version=int(version),
        )
        return dict(rows)

    def fetch(self, name: str, version: str, destination: Path) -> Path:
        row = self._one(
            "SELECT storage_location FROM model_versions WHERE name = :name AND version = :version",
            name=name,
            version=int(version),
        )
        location = urlparse(row[0]) if row and row[0] else None
        if location is None or location.scheme != "file":
            raise RegistryError(
                f"{name} version {version} has no local files to read ({row[0] if row else 'no location'}).",
                hint="Point the tracking URI at the store that holds its artifacts.",
            )
        source = Path(unquote(location.path))
        if not source.is_dir():
            raise RegistryError(
                f"Could not fetch models:/{name}/{version}: {source} is gone.",
                hint="Check the MLflow tracking URI and that the model exists.",
            )
        shutil.copytree(source, destination, symlinks=True, dirs_exist_ok=True)  # as MLflow downloads: into it
        return destination

    def close(self) -> None:
        self.engine.dispose()


def registry_view(tracking_uri: str) -> RegistryView:
    """The fastest view that reads ``tracking_uri`` correctly (see the module docstring)."""
    fast = SqlView.open(tracking_uri)
    if fast is not None:
        return fast
    from mlflow import MlflowClient

    return MlflowView(MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri))
