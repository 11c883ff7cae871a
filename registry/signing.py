"""Model signatures: OpenSSF model-signing over every file of a model folder.

The Sigstore bundle is stored inside the model folder, in ``conveyor/``, beside the provenance
statement; both are excluded from what is signed, as is ``registered_model_meta`` (MLflow writes
it on download, with content that depends on how the model was fetched). The verifier is given
exactly the signer's hashing configuration, and unsigned files are never ignored: an added,
removed, renamed or changed file fails verification.
"""

from __future__ import annotations

from pathlib import Path

from policies.errors import SignatureInvalid
from registry.digests import file_digest, json_digest

__all__ = ["BUNDLE", "IGNORED", "PROVENANCE", "model_digest", "model_files", "sign_model", "verify_model"]

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
    try:
        config.set_hashing_config(_hashing()).verify(model_dir, bundle)
    except Exception as exc:  # model-signing raises ValueError and others, with the mismatch listed
        detail = " ".join(str(exc).split())[:400]
        raise SignatureInvalid(
            f"The model's signature does not verify: {detail}.",
            hint="The model files were changed after signing, or were signed by another key: do not use this model.",
        ) from None
