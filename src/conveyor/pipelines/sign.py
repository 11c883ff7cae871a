"""Signing: a Sigstore bundle over the model's files and a signed provenance statement beside it.

The model is fetched from MLflow exactly as the registry will later serve it, signed there, and
the two signature files are uploaded into the model's own artifacts under ``conveyor/``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.pipelines.flows import Record
from conveyor.policies.signing import CertificateSigner, SigningPolicy
from conveyor.registry.digests import file_digest
from conveyor.registry.events import EventKind
from conveyor.registry.keys import SigningKey, load_or_create_key
from conveyor.registry.provenance import Material, build_statement, sign_statement
from conveyor.registry.signing import (
    BUNDLE,
    PROVENANCE,
    certificate_identity,
    model_digest,
    sign_model,
    sign_model_with_certificate,
)

__all__ = ["CodeState", "SignedModel", "code_state", "project_signer", "sign_and_attest", "signed_record"]


@dataclass(frozen=True)
class CodeState:
    commit: str  # "unknown" outside a git work tree
    dirty: bool | None


@dataclass(frozen=True)
class SignedModel:
    model_dir: Path  # the signed local copy
    files: dict[str, str]
    model_digest: str
    bundle_digest: str
    provenance_digest: str
    key_fingerprint: str  # or, for a certificate signer, its identity


def code_state(root: Path) -> CodeState:
    """The commit the code is at and whether the work tree has uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return CodeState("unknown", None)
    return CodeState(commit, bool(git("status", "--porcelain", "--untracked-files=no")))


def project_signer(policy: SigningPolicy, root: Path, keys_dir: Path) -> SigningKey | CertificateSigner:
    """Who signs, as the signing policy says: the project key (made on first use), or the
    organisation certificate it names (paths relative to the project root)."""
    if policy.sign_with == "key":
        return load_or_create_key(keys_dir)
    assert policy.certificate is not None  # the policy's own check guarantees it

    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else root / path

    c = policy.certificate
    return CertificateSigner(
        private_key=resolve(c.private_key), certificate=resolve(c.certificate), chain=tuple(resolve(p) for p in c.chain)
    )


def sign_and_attest(
    model_dir: Path,
    files: dict[str, str],
    model_id: str,
    signer: SigningKey | CertificateSigner,
    *,
    materials: list[Material],
    parameters: dict[str, Any],
    run: dict[str, Any],
) -> SignedModel:
    """Sign the model fetched into ``model_dir`` (whose files are ``files``) with the project key
    or an organisation certificate, and attach bundle and provenance to MLflow model ``model_id``."""
    from cryptography.hazmat.primitives import serialization
    from mlflow import MlflowClient

    if isinstance(signer, SigningKey):
        bundle = sign_model(model_dir, signer.private_path)
        private_key, name = signer.private_key(), signer.fingerprint
    else:
        bundle = sign_model_with_certificate(model_dir, signer.private_key, signer.certificate, list(signer.chain))
        private_key = serialization.load_pem_private_key(signer.private_key.read_bytes(), password=None)
        name = _certificate_name(signer.certificate)
    statement = build_statement(files, materials, parameters, run)
    provenance = sign_statement(statement, private_key, model_dir / PROVENANCE)
    MlflowClient().log_model_artifacts(model_id, str(model_dir / BUNDLE.parent), artifact_path=BUNDLE.parent.as_posix())
    return SignedModel(model_dir, files, model_digest(files), file_digest(bundle), file_digest(provenance), name)


def _certificate_name(path: Path) -> str:
    from cryptography import x509

    names = certificate_identity(x509.load_pem_x509_certificate(path.read_bytes()))
    return names[0] if names else "certificate"


def signed_record(signed: SignedModel, code: CodeState, made_from: Mapping[str, str | None]) -> Record:
    """The ``model.signed`` record of a signing: the signature and the provenance, made from the
    model and what it was built from (``made_from``: data, validation, weights, ...)."""
    return Record(
        EventKind.MODEL_SIGNED,
        inputs={"model": signed.model_digest, **made_from},
        outputs=[signed.bundle_digest, signed.provenance_digest],
        details={"signer": signed.key_fingerprint, "code_commit": code.commit, "code_dirty": code.dirty},
    )
