"""Registration: fetch the model as stored, verify signature and provenance, then register it.

Nothing reaches the registry unverified: the files are downloaded afresh and checked against
the bundle and the provenance statement by a signer the signing policy trusts.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from conveyor.policies.errors import SignatureInvalid
from conveyor.policies.signing import SigningPolicy
from conveyor.registry.models import RegisteredVersion, fetch_model, register_version
from conveyor.registry.verify import VerificationReport, verify_folder

__all__ = ["register_verified"]


def register_verified(
    name: str,
    model_uri: str,
    policy: SigningPolicy,
    *,
    root: Path,
    keys_dir: Path,
    tags: dict[str, str],
    alias: str = "candidate",
    weights: Path | None = None,
) -> tuple[RegisteredVersion, VerificationReport]:
    """Verify the model at ``model_uri`` as the registry holds it, then register it under ``alias``."""
    folder = Path(tempfile.mkdtemp(prefix="conveyor-verify-"))
    try:
        report = verify_folder(
            fetch_model(model_uri, folder), policy, root=root, keys_dir=keys_dir, name=name, weights=weights
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    failed = report.first_failure
    if failed is not None:
        raise SignatureInvalid(
            f"Refused to register {name}: the {failed.name} check failed: {failed.detail}.",
            hint="Nothing was registered. The model changed after signing, or its signer is not trusted.",
        )
    tags = {**tags, "conveyor.model_digest": str(report.model_digest)}
    if report.signer and report.signer.startswith("sha256:"):
        tags["conveyor.key_fingerprint"] = report.signer
    elif report.signer:
        tags["conveyor.signer_identity"] = report.signer
    return register_version(name, model_uri, str(report.model_digest), tags, alias), report
