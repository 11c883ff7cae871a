"""The project's signing key: an EC P-256 key pair under ``<home>/keys``, made on first use.

The private key is written with mode 0600 inside a 0700 folder; its fingerprint (the sha256 of
the public key's DER encoding) names the signer in tags, provenance and the ledger.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from conveyor.policies.errors import NotFound, SignatureInvalid
from conveyor.registry.digests import bytes_digest

__all__ = ["SigningKey", "fingerprint", "load_or_create_key", "show_public_key"]

PRIVATE, PUBLIC = "signing-key.pem", "signing-key.pub.pem"


@dataclass(frozen=True)
class SigningKey:
    """Where the key pair is, and the public key's fingerprint."""

    private_path: Path
    public_path: Path
    fingerprint: str

    def private_key(self):  # noqa: ANN201 - cryptography's key type
        from cryptography.hazmat.primitives import serialization

        return serialization.load_pem_private_key(self.private_path.read_bytes(), password=None)


def fingerprint(public_pem: bytes) -> str:
    """sha256 over the DER SubjectPublicKeyInfo of a PEM public key."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(public_pem)
    except ValueError:
        raise SignatureInvalid(
            "The public key is not a PEM public key.", hint="Re-create it with `conveyor keys init`."
        ) from None
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bytes_digest(der)


def load_or_create_key(keys_dir: Path) -> SigningKey:
    """The key pair in ``keys_dir``; created (P-256, private key 0600) when there is none."""
    private, public = keys_dir / PRIVATE, keys_dir / PUBLIC
    if not private.exists():
        _create(keys_dir, private, public)
    elif not public.exists():
        raise SignatureInvalid(
            f"{private} exists but its public key {public} is missing.",
            hint="Restore the public key from a backup; Conveyor will not overwrite a private key.",
        )
    return SigningKey(private, public, fingerprint(public.read_bytes()))


def show_public_key(keys_dir: Path) -> tuple[str, str]:
    """The project's public key (PEM text) and its fingerprint; ``NotFound`` when there is none."""
    public = keys_dir / PUBLIC
    if not public.is_file():
        raise NotFound(f"No signing key in {keys_dir}.", hint="Create one with `conveyor keys init`.")
    return public.read_text().strip(), fingerprint(public.read_bytes())


def _create(keys_dir: Path, private: Path, public: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys_dir.mkdir(parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # O_EXCL: if another process made the key first, fail here rather than overwrite it.
    try:
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    partial = public.with_suffix(".partial")
    partial.write_bytes(public_pem)
    partial.replace(public)
