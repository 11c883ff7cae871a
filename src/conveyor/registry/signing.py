"""Model signatures: OpenSSF model-signing over every file of a model folder.

The Sigstore bundle is stored inside the model folder, in ``conveyor/``, beside the provenance
statement; both are excluded from what is signed, as is ``registered_model_meta`` (MLflow writes
it on download, with content that depends on how the model was fetched). The verifier is given
exactly the signer's hashing configuration, and unsigned files are never ignored: an added,
removed, renamed or changed file fails verification.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from conveyor.policies.errors import SignatureInvalid
from conveyor.registry.digests import file_digest, json_digest

__all__ = [
    "BUNDLE",
    "IGNORED",
    "PROVENANCE",
    "certificate_identity",
    "model_digest",
    "model_files",
    "sign_model",
    "sign_model_with_certificate",
    "verify_model",
    "verify_model_with_chain",
]

BUNDLE = Path("conveyor/model.sig")
PROVENANCE = Path("conveyor/provenance.dsse.json")
IGNORED = ("conveyor", "registered_model_meta")


def model_files(model_dir: Path) -> dict[str, str]:
    """Every signed file of the model, by path relative to the folder, with its digest."""
    files = {}
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if relative.parts[0] in IGNORED or path.is_dir():
            continue
        files[relative.as_posix()] = file_digest(path)
    if not files:
        raise SignatureInvalid(f"{model_dir} holds no model files.", hint="Check the model was saved.")
    return files


def model_digest(files: dict[str, str]) -> str:
    """The model's content address: the digest of its file list (path -> file digest)."""
    return json_digest(files)


def _hashing():  # noqa: ANN202 - model_signing's config type
    import model_signing

    return model_signing.hashing.Config().set_ignored_paths(paths=list(IGNORED), ignore_git_paths=False)


def sign_model(model_dir: Path, private_key: Path) -> Path:
    """Sign every file in ``model_dir``; returns the bundle's path inside it."""
    import model_signing

    bundle = model_dir / BUNDLE
    bundle.parent.mkdir(exist_ok=True)
    config = model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key)
    config.set_hashing_config(_hashing()).sign(model_dir, bundle)
    return bundle


def verify_model(model_dir: Path, public_key: Path) -> None:
    """Check the bundle in ``model_dir`` against its files and ``public_key``; raise if anything differs."""
    import model_signing

    bundle = model_dir / BUNDLE
    if not bundle.is_file():
        raise SignatureInvalid(
            f"The model at {model_dir} is not signed: no {BUNDLE}.",
            hint="Only models trained and signed by `conveyor train` can be registered or served.",
        )
    config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    _verify(
        config,
        model_dir,
        "The model files were changed after signing, or were signed by another key: do not use this model.",
    )


def _verify(config: Any, model_dir: Path, hint: str) -> None:  # model_signing's verifying config
    """Run model-signing's verifier with the signer's hashing configuration; one error for any failure."""
    try:
        config.set_hashing_config(_hashing()).verify(model_dir, model_dir / BUNDLE)
    except Exception as exc:  # model-signing raises ValueError and others, with the mismatch listed
        detail = " ".join(str(exc).split())[:400]
        raise SignatureInvalid(f"The model's signature does not verify: {detail}.", hint=hint) from None


def sign_model_with_certificate(model_dir: Path, private_key: Path, certificate: Path, chain: list[Path]) -> Path:
    """Sign with an organisation certificate (leaf + chain go into the bundle)."""
    import model_signing

    bundle = model_dir / BUNDLE
    bundle.parent.mkdir(exist_ok=True)
    config = model_signing.signing.Config().use_certificate_signer(
        private_key=private_key, signing_certificate=certificate, certificate_chain=chain
    )
    config.set_hashing_config(_hashing()).sign(model_dir, bundle)
    return bundle


def certificate_identity(certificate: Any) -> list[str]:  # cryptography's Certificate
    """The names a certificate vouches for: subject common names and SAN e-mails, URIs and DNS names."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    names = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.RFC822Name, x509.UniformResourceIdentifier, x509.DNSName):
            names += san.get_values_for_type(kind)
    except x509.ExtensionNotFound:
        pass
    return list(dict.fromkeys(str(n) for n in names))


def verify_model_with_chain(
    model_dir: Path, ca_chain: list[Path], identities: tuple[str, ...], *, now: datetime
) -> tuple[str, bytes]:
    """Verify a certificate-signed model: chain to the CA (model-signing), then what it does not
    check: the signing leaf is valid ``now`` and names one of the pinned ``identities``.
    Returns (identity, the leaf's public key as PEM)."""
    import model_signing
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    bundle = model_dir / BUNDLE
    material = json.loads(bundle.read_text())["verificationMaterial"]
    raw = (material.get("x509CertificateChain", {}).get("certificates") or [material.get("certificate")])[0]["rawBytes"]
    leaf = x509.load_der_x509_certificate(base64.b64decode(raw))
    if now < leaf.not_valid_before_utc or now > leaf.not_valid_after_utc:
        raise SignatureInvalid(
            f"The signer's certificate ({leaf.subject.rfc4514_string()}) is not valid now: valid "
            f"{leaf.not_valid_before_utc:%Y-%m-%d} to {leaf.not_valid_after_utc:%Y-%m-%d}.",
            hint="Re-sign the model with a current certificate.",
        )
    names = certificate_identity(leaf)
    if not set(names) & set(identities):
        raise SignatureInvalid(
            f"The signer's certificate names {', '.join(names) or 'nobody'}, not a pinned identity ({', '.join(identities)}).",
            hint="Only the identities pinned in policies/signing.yaml may sign models.",
        )
    config = model_signing.verifying.Config().use_certificate_verifier(certificate_chain=ca_chain)
    _verify(config, model_dir, "The files changed after signing, or the certificate does not chain to the trusted CA.")
    pem = leaf.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return next(n for n in names if n in identities), pem
