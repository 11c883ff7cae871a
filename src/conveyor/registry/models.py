"""The model registry (MLflow): fetch a model's files, register a verified version, move aliases.

Registration verifies first and writes nothing if verification fails; if any step after the
version is created fails, the version is deleted again, so the registry never holds a
half-registered model.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.policies.errors import RegistryError
from conveyor.registry.digests import json_digest
from conveyor.registry.signing import BUNDLE, PROVENANCE

__all__ = [
    "RegisteredVersion",
    "experiment",
    "export_statements",
    "fetch_model",
    "register_version",
    "version_digest",
]


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    alias: str
    digest: str  # content address of (name, version, model digest): the ledger's name for it


def version_digest(name: str, version: str, model: str) -> str:
    """The content address of a registered version: which model, under which name and number."""
    return json_digest({"registry": "mlflow", "name": name, "version": str(version), "model": model})


def experiment(name: str, artifact_root: Path, kind: str = "custom_model_development") -> str:
    """The id of MLflow experiment ``name``, created with its artifacts under ``artifact_root``
    (an MLflow server keeps them in its own artifact store: the server profile's bucket).

    ``kind`` is the tag MLflow 3's UI opens an experiment by: "custom_model_development" on its
    runs, "genai_development" on traces and evaluations; an experiment from before the tag gets it."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        if _KIND not in found.tags:
            mlflow.MlflowClient().set_experiment_tag(found.experiment_id, _KIND, kind)
        return found.experiment_id
    if mlflow.get_tracking_uri().startswith(("http://", "https://")):  # a server: its own artifact store
        return mlflow.create_experiment(name, tags={_KIND: kind})
    return mlflow.create_experiment(name, artifact_location=(artifact_root / name).as_uri(), tags={_KIND: kind})


_KIND = "mlflow.experimentKind"


def fetch_model(model_uri: str, destination: Path | None = None, *, tracking_uri: str | None = None) -> Path:
    """Download a model's files (``models:/…``) into ``destination`` (a new temp folder by default),
    from ``tracking_uri``'s registry (default: MLflow's process-wide one)."""
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    target = destination or Path(tempfile.mkdtemp(prefix="conveyor-model-"))
    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=str(target), tracking_uri=tracking_uri, registry_uri=tracking_uri
            )
        )
    except Exception as exc:  # MlflowException and storage errors
        raise RegistryError(
            f"Could not fetch {model_uri}: {exc}.", hint="Check the MLflow tracking URI and that the model exists."
        ) from None


def register_version(name: str, model_uri: str, model: str, tags: dict[str, str], alias: str) -> RegisteredVersion:
    """Create a version of ``name`` from ``model_uri`` with ``tags`` and point ``alias`` at it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
        # A logged model (models:/m-...) is named by its id too: an MLflow server checks the source against it.
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        version = client.create_model_version(name, model_uri, tags=tags, model_id=model_id)
    except MlflowException as exc:
        raise RegistryError(
            f"MLflow refused to register {name}: {exc.message}.", hint="Check the tracking URI and the model URI."
        ) from None
    try:
        client.set_model_version_tag(
            name, version.version, "conveyor.version_digest", version_digest(name, version.version, model)
        )
        client.set_registered_model_alias(name, alias, version.version)
    except Exception as exc:
        _undo(client, name, version.version)
        raise RegistryError(
            f"Registering {name} version {version.version} failed half-way and was undone: {exc}.",
            hint="Run the command again.",
        ) from None
    return RegisteredVersion(name, str(version.version), alias, version_digest(name, version.version, model))


def _undo(client: Any, name: str, version: str) -> None:
    with contextlib.suppress(Exception):  # the original error is the one to report
        client.delete_model_version(name, version)


def export_statements(client: Any, ref: str, output: Path) -> tuple[int, int]:
    """Write each version's signed statements as they are (provenance DSSE, signature bundle) to
    ``output``: ``ref`` is a model (every version), ``MODEL/VERSION`` or ``MODEL@ALIAS``. Returns
    (statements written, versions)."""
    # here: registry.verify builds on this module
    from conveyor.registry.verify import resolve

    if "/" in ref or "@" in ref:
        versions = [resolve(client, ref)]
    else:
        versions = [(ref, str(v.version)) for v in client.search_model_versions(f"name='{ref}'")]
    output.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, version in sorted(versions, key=lambda nv: int(nv[1])):
        with tempfile.TemporaryDirectory(prefix="conveyor-intoto-") as scratch:
            folder = fetch_model(f"models:/{name}/{version}", Path(scratch))
            for source, suffix in ((PROVENANCE, "provenance.dsse.json"), (BUNDLE, "model-signature.sigstore.json")):
                if (folder / source).is_file():
                    (output / f"{name}-{version}.{suffix}").write_bytes((folder / source).read_bytes())
                    written += 1
    return written, len(versions)
