"""The signing policy (``policies/signing.yaml``): who Conveyor trusts to sign models, and how
this project signs.

Trusted signers are public keys pinned by fingerprint, the project's own key, or an organisation
CA whose signer certificates must name one of the pinned identities. model-signing checks that a
certificate chains to the CA but neither its expiry nor who it names: Conveyor checks both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conveyor.policies.loading import load_policy

__all__ = ["CertificateSigner", "OrganisationCA", "SigningPolicy", "TrustedKey", "load_signing_policy"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrustedKey(_Strict):
    """A public key (PEM file, relative to the project) trusted under its pinned fingerprint."""

    name: str
    public_key: Path
    fingerprint: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")


class OrganisationCA(_Strict):
    """A CA (root first, then intermediates, as PEM files) and the signer identities it may vouch for."""

    chain: tuple[Path, ...] = Field(min_length=1)
    identities: tuple[str, ...] = Field(min_length=1)  # a certificate's subject common name or SAN e-mail


class CertificateSigner(_Strict):
    """This project's signer when it signs with a certificate: key, leaf and chain (PEM files)."""

    private_key: Path
    certificate: Path
    chain: tuple[Path, ...] = ()


class SigningPolicy(_Strict):
    sign_with: Literal["key", "certificate"] = "key"
    certificate: CertificateSigner | None = None
    trust_project_key: bool = True  # the key pair in <home>/keys (`conveyor keys init`)
    trusted_keys: tuple[TrustedKey, ...] = ()
    organisation_ca: OrganisationCA | None = None
    # Types a scikit-learn model may ask skops to trust, as glob patterns of dotted names; a signed
    # model listing another is refused. Empty: numpy, SciPy, scikit-learn and the project's estimator class.
    loadable_types: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> SigningPolicy:
        if self.sign_with == "certificate" and self.certificate is None:
            raise ValueError(
                "`sign_with: certificate` needs a `certificate:` section (private_key, certificate, chain)"
            )
        if not (self.trust_project_key or self.trusted_keys or self.organisation_ca):
            raise ValueError("no signer is trusted: set trust_project_key, trusted_keys or organisation_ca")
        return self

    @field_validator("trusted_keys")
    @classmethod
    def _unique(cls, keys: tuple[TrustedKey, ...]) -> tuple[TrustedKey, ...]:
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError("trusted key names must be unique")
        return keys


def load_signing_policy(root: Path) -> SigningPolicy:
    """``<root>/policies/signing.yaml``; a project without one signs with, and trusts, its own key.

    A file that is there but malformed is an error, never this default.
    """
    path = root / "policies" / "signing.yaml"
    return load_policy(path, SigningPolicy) if path.exists() else SigningPolicy()
