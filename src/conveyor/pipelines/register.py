"""Registration: fetch the model as stored, verify signature and provenance, then register it,
and record it in the ledger; tabular models and LLM releases alike.

Nothing reaches the registry unverified: the files are downloaded afresh and checked against
the bundle and the provenance statement by a signer the signing policy trusts. The registry's
writes and the ledger's ``model.registered`` happen under the model's registration lock; a step
that fails deletes the version again, and one killed half-way is marked by the next command that
touches the model (``registry.registration``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from conveyor.policies.errors import SignatureInvalid
from conveyor.policies.signing import SigningPolicy
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger
from conveyor.registry.models import RegisteredVersion, fetch_model, register_version
from conveyor.registry.registration import guarded, reconcile, registering
from conveyor.registry.verify import VerificationReport, verify_folder
from conveyor.registry.workspace import Workspace

__all__ = ["register_and_record", "register_verified"]


def register_and_record(
    ws: Workspace,
    ledger: Ledger,
    name: str,
    model_uri: str,
    *,
    tags: dict[str, str],
    bundle_digest: str,
    provenance_digest: str,
    weights: Path | None = None,
    before_record: Callable[[], object] | None = None,
) -> tuple[RegisteredVersion, VerificationReport]:
    """Register the model at ``model_uri`` as ``name`` @candidate (verified first) and record
    ``model.registered``, under the model's registration lock; ``before_record`` runs between the
    two. Earlier registrations of ``name`` that died half-way are marked first."""
    client = ws.mlflow()
    with registering(ws.home, name):
        reconcile(client, ledger, ws.home, name)
        version, verified = register_verified(
            name, model_uri, ws.signing(), root=ws.root, keys_dir=ws.keys_dir, tags=tags, weights=weights
        )

        def record() -> None:
            if before_record is not None:
                before_record()
            ledger.append(
                EventKind.MODEL_REGISTERED,
                inputs={"model": str(verified.model_digest), "bundle": bundle_digest, "provenance": provenance_digest},
                outputs=[version.digest],
                details={
                    "name": version.name,
                    "version": version.version,
                    "alias": version.alias,
                    "signer": verified.signer,
                },
            )

        guarded(record, undo=lambda: client.delete_model_version(name, version.version))
    return version, verified


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
