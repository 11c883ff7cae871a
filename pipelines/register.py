"""Registration: fetch the model as stored, verify signature and provenance, then register it.

Nothing reaches the registry unverified: the files are downloaded afresh and checked against
the bundle and the provenance statement with the project's public key.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from registry.keys import SigningKey
from registry.models import RegisteredVersion, fetch_model, register_version
from registry.provenance import verify_statement
from registry.signing import PROVENANCE, model_digest, model_files, verify_model

__all__ = ["VerifiedModel", "register_verified", "verify_fetched"]


@dataclass(frozen=True)
class VerifiedModel:
    files: dict[str, str]
    model_digest: str
    statement: dict


def verify_fetched(model_dir: Path, key: SigningKey) -> VerifiedModel:
    """Verify a fetched model folder: signature over every file, provenance subjects = the files."""
    verify_model(model_dir, key.public_path)
    files = model_files(model_dir)
    statement = verify_statement(model_dir / PROVENANCE, key.public_path.read_bytes(), files)
    return VerifiedModel(files, model_digest(files), statement)


def register_verified(name: str, model_uri: str, key: SigningKey, tags: dict[str, str], alias: str = "candidate") -> tuple[RegisteredVersion, VerifiedModel]:
    """Verify the model at ``model_uri`` as the registry holds it, then register it under ``alias``."""
    folder = Path(tempfile.mkdtemp(prefix="conveyor-verify-"))
    try:
        verified = verify_fetched(fetch_model(model_uri, folder), key)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    tags = {**tags, "conveyor.model_digest": verified.model_digest, "conveyor.key_fingerprint": key.fingerprint}
    return register_version(name, model_uri, verified.model_digest, tags, alias), verified
