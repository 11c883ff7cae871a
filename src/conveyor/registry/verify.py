"""Verify a registered model version end to end, link by link, before anyone trusts it.

Links, in order: the version exists in the registry; its files can be fetched; a trusted signer's
signature covers exactly those files; the provenance statement is signed by the same signer and
its subjects are exactly the files; the registry's tags agree with what was verified; the ledger
recorded this version's registration and signing with the same digests.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.policies.errors import ConveyorError, NotFound
from conveyor.policies.signing import SigningPolicy
from conveyor.registry.digests import file_digest
from conveyor.registry.keys import PUBLIC, fingerprint
from conveyor.registry.ledger import Ledger
from conveyor.registry.models import version_digest
from conveyor.registry.provenance import verify_statement
from conveyor.registry.signing import (
    BUNDLE,
    PROVENANCE,
    model_digest,
    model_files,
    verify_model,
    verify_model_with_chain,
)
from conveyor.registry.store import MlflowView, RegistryView
from conveyor.registry.weights import link_weights, release_weights

__all__ = [
    "Link",
    "Signer",
    "VerificationReport",
    "in_project",
    "materials_link",
    "parse_ref",
    "resolve",
    "trusted_keys",
    "verify_folder",
    "verify_version",
    "what_registry_has",
]


@dataclass(frozen=True)
class Link:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Signer:
    """Who signed: a key fingerprint, or a certificate identity, and the public key (PEM)."""

    name: str
    public_pem: bytes = field(repr=False)


@dataclass
class VerificationReport:
    name: str
    version: str | None
    links: list[Link] = field(default_factory=list)
    model_digest: str | None = None
    version_digest: str | None = None
    signer: str | None = None
    size_bytes: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    statement: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return bool(self.links) and all(link.ok for link in self.links)

    @property
    def first_failure(self) -> Link | None:
        return next((link for link in self.links if not link.ok), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ok": self.ok,
            "model_digest": self.model_digest,
            "version_digest": self.version_digest,
            "signer": self.signer,
            "links": [asdict(link) for link in self.links],
        }


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME/VERSION`` or ``NAME@ALIAS`` -> (name, version, alias)."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if name and alias:
            return name, None, alias
    elif "/" in ref:
        name, _, version = ref.rpartition("/")
        if name and version.isdigit():
            return name, version, None
    raise ConveyorError(
        f"{ref!r} does not name a model version.",
        hint="Use MODEL/VERSION (loan-default/3) or MODEL@ALIAS (loan-default@champion).",
    )


def resolve(client: Any, ref: str) -> tuple[str, str]:
    """The (name, version) that ``ref`` names in the registry."""
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_ref(ref)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        raise NotFound(f"The registry has no {ref}.", hint=what_registry_has(client, name)) from None
    return name, str(found.version)


def what_registry_has(client: Any, name: str) -> str:
    """What the registry does hold near ``name``: "did you mean" for a name, its versions and
    aliases for a known one."""
    import difflib

    try:
        names = sorted(m.name for m in client.search_registered_models(max_results=1000))
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
            if close:
                return f"Did you mean {' or '.join(close)}?"
            return f"Registered models: {', '.join(names)}." if names else "Nothing is registered yet."
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        aliases = client.get_registered_model(name).aliases
    except Exception:
        return "Check the name and alias (the registry could not be listed)."
    named = ", ".join(f"@{a} (version {v})" for a, v in sorted(aliases.items())) or "no aliases"
    return f"{name} has versions {', '.join(map(str, versions)) or 'none'}; {named}."


def verify_version(
    ref: str,
    policy: SigningPolicy,
    *,
    root: Path,
    keys_dir: Path,
    ledger: Ledger | None,
    keep: Path | None = None,
    registry: RegistryView | None = None,
    weights: Path | None = None,
) -> VerificationReport:
    """Check every link for the version ``ref`` names; never raises for a failed link.

    With ``keep`` (an empty folder), the fetched files stay there: whoever loads the model loads
    exactly the bytes that were verified, not a second download. ``registry`` is where the version
    is read (``Workspace.registry()``; default: MLflow's client on its process-wide URI). An LLM
    release's weights are linked in from the ``weights`` store before anything is checked, so the
    signature covers them."""
    if registry is None:
        from mlflow import MlflowClient

        registry = MlflowView(MlflowClient())
    name, _, _ = parse_ref(ref)
    report = VerificationReport(name, None)
    try:
        name, version = registry.resolve(ref)
    except ConveyorError as exc:
        report.links.append(Link("registry", False, exc.message))
        return report
    report.version = version
    report.tags = registry.tags(name, version)
    report.links.append(Link("registry", True, f"{name} version {version} exists"))

    folder = keep or Path(tempfile.mkdtemp(prefix="conveyor-verify-"))
    try:
        try:
            model_dir = registry.fetch(name, version, folder)
            _link_weights(model_dir, weights)
            files = model_files(model_dir)
        except ConveyorError as exc:
            report.links.append(Link("files", False, exc.message))
            return report
        report.model_digest = model_digest(files)
        report.version_digest = version_digest(name, version, report.model_digest)
        report.size_bytes = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
        report.links.append(Link("files", True, f"{len(files)} files, model {report.model_digest}"))
        signer = _check_signature(model_dir, policy, root, keys_dir, report)
        if signer is not None:
            _check_provenance(model_dir, files, signer, report)
        _check_tags(model_dir, report)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    if ledger is not None:
        _check_ledger(ledger, report)
    return report


def verify_folder(
    model_dir: Path,
    policy: SigningPolicy,
    *,
    root: Path,
    keys_dir: Path,
    name: str = "model",
    version: str | None = None,
    tags: dict[str, str] | None = None,
    ledger: Any = None,
    weights: Path | None = None,
) -> VerificationReport:
    """Signature and provenance links for a model folder (e.g. before it is registered); given the
    version and its registry ``tags`` (e.g. from an evidence bundle), the tags and ledger links too."""
    report = VerificationReport(name, version)
    try:
        _link_weights(model_dir, weights)
    except ConveyorError as exc:
        report.links.append(Link("files", False, exc.message))
        return report
    files = model_files(model_dir)
    report.model_digest = model_digest(files)
    signer = _check_signature(model_dir, policy, root, keys_dir, report)
    if signer is not None:
        _check_provenance(model_dir, files, signer, report)
    if version is not None and tags is not None:
        report.tags = dict(tags)
        report.version_digest = version_digest(name, version, report.model_digest)
        _check_tags(model_dir, report)
        if ledger is not None:
            _check_ledger(ledger, report)
    return report


def _link_weights(model_dir: Path, store: Path | None) -> None:
    """An LLM release's weights, from the store into its folder (nothing for other models)."""
    record = release_weights(model_dir)
    if record is None or (model_dir / str(record.get("file", ""))).is_file():
        return  # not an LLM release, or its weights are in the folder already (an evidence bundle)
    if store is None:
        raise ConveyorError(
            "This version is an LLM release and no weights store was given to read its weights from.",
            hint="Verify it through a Workspace (`conveyor verify`), which knows the store.",
        )
    link_weights(model_dir, store)


def trusted_keys(policy: SigningPolicy, root: Path, keys_dir: Path) -> tuple[list[Signer], list[str]]:
    """The public keys the policy trusts, and why any configured key was left out (a missing file,
    or a file whose fingerprint is not the pinned one)."""
    signers, problems = [], []
    if policy.trust_project_key and (keys_dir / PUBLIC).is_file():
        pem = (keys_dir / PUBLIC).read_bytes()
        signers.append(Signer(fingerprint(pem), pem))
    for key in policy.trusted_keys:
        path = in_project(root, key.public_key)
        if not path.is_file():
            problems.append(f"trusted key {key.name!r}: no file at {path}")
        elif (found := fingerprint(path.read_bytes())) != key.fingerprint:
            problems.append(
                f"trusted key {key.name!r}: {path} has fingerprint {found}, not the pinned {key.fingerprint}"
            )
        else:
            signers.append(Signer(key.fingerprint, path.read_bytes()))
    return signers, problems


def _check_signature(
    model_dir: Path, policy: SigningPolicy, root: Path, keys_dir: Path, report: VerificationReport
) -> Signer | None:
    bundle = model_dir / BUNDLE
    if not bundle.is_file():
        report.links.append(Link("signature", False, f"the model is not signed (no {BUNDLE})"))
        return None
    if _bundle_certificates(bundle):
        if policy.organisation_ca is None:
            report.links.append(
                Link("signature", False, "signed with a certificate, but no organisation CA is trusted")
            )
            return None
        try:
            identity, pem = verify_model_with_chain(
                model_dir,
                [in_project(root, p) for p in policy.organisation_ca.chain],
                policy.organisation_ca.identities,
                now=datetime.now(UTC),
            )
        except ConveyorError as exc:
            report.links.append(Link("signature", False, exc.message))
            return None
        report.signer = identity
        report.links.append(
            Link("signature", True, f"signed by {identity} (certificate chains to the organisation CA)")
        )
        return Signer(identity, pem)
    candidates, problems = trusted_keys(policy, root, keys_dir)
    with tempfile.TemporaryDirectory(prefix="conveyor-keys-") as keys:
        for signer in candidates:
            key_file = Path(keys) / f"trusted-{signer.name.split(':')[1][:16]}.pem"
            key_file.write_bytes(signer.public_pem)
            try:
                verify_model(model_dir, key_file)
            except ConveyorError:
                continue
            report.signer = signer.name
            report.links.append(Link("signature", True, f"signed by trusted key {signer.name}"))
            return signer
    detail = "no trusted key verifies the signature" if candidates else "no trusted key is available"
    detail += ": the files changed after signing, or another key signed them"
    report.links.append(Link("signature", False, "; ".join([detail, *problems])))
    return None


def _check_provenance(model_dir: Path, files: dict[str, str], signer: Signer, report: VerificationReport) -> None:
    try:
        report.statement = verify_statement(model_dir / PROVENANCE, signer.public_pem, files)
    except ConveyorError as exc:
        report.links.append(Link("provenance", False, exc.message))
        return
    report.links.append(
        Link("provenance", True, f"signed by the same signer; its {len(files)} subjects are exactly the files")
    )


def _check_tags(model_dir: Path, report: VerificationReport) -> None:
    expected = {"conveyor.model_digest": report.model_digest, "conveyor.version_digest": report.version_digest}
    if (model_dir / BUNDLE).is_file():
        expected["conveyor.bundle_digest"] = file_digest(model_dir / BUNDLE)
    if (model_dir / PROVENANCE).is_file():
        expected["conveyor.provenance_digest"] = file_digest(model_dir / PROVENANCE)
    if report.signer and report.signer.startswith("sha256:"):
        expected["conveyor.key_fingerprint"] = report.signer
    if report.statement is not None:
        data = [
            d
            for d in report.statement["predicate"]["buildDefinition"]["resolvedDependencies"]
            if d.get("uri", "").startswith("data") or d.get("uri", "").endswith((".csv", ".parquet"))
        ]
        if data:
            expected["conveyor.data_digest"] = f"sha256:{data[0]['digest']['sha256']}"
    wrong = [
        f"{tag} is {report.tags.get(tag)!r}, expected {value!r}"
        for tag, value in expected.items()
        if report.tags.get(tag) != value
    ]
    report.links.append(Link("tags", not wrong, "; ".join(wrong) if wrong else f"{len(expected)} registry tags agree"))


def _check_ledger(ledger: Ledger, report: VerificationReport) -> None:
    if report.version_digest is None:
        return
    registered = [e for e in ledger.producers(report.version_digest) if e.kind == "model.registered"]
    if not registered:
        detail = f"no model.registered event outputs {report.version_digest}"
        if "conveyor.model_digest" in report.tags:  # Conveyor began to register it: the ledger never heard the end
            detail += ": its registration did not finish (the process stopped half-way); it can never be promoted"
        report.links.append(Link("ledger", False, detail))
        return
    event = registered[-1]
    bundle, provenance = report.tags.get("conveyor.bundle_digest"), report.tags.get("conveyor.provenance_digest")
    missing = [d for d in (report.model_digest, bundle, provenance) if d not in event.inputs]
    signed = [e for e in ledger.producers(bundle) if e.kind == "model.signed"] if bundle else []
    if missing:
        report.links.append(Link("ledger", False, f"event #{event.seq} does not name {', '.join(map(str, missing))}"))
    elif not signed or provenance not in signed[-1].outputs:
        report.links.append(Link("ledger", False, "no model.signed event recorded this bundle and provenance"))
    else:
        report.links.append(
            Link("ledger", True, f"registered in event #{event.seq}, signed in event #{signed[-1].seq}")
        )


def _bundle_certificates(bundle: Path) -> list[bytes]:
    try:
        material = json.loads(bundle.read_text()).get("verificationMaterial", {})
    except (OSError, ValueError):
        return []
    chain = material.get("x509CertificateChain", {}).get("certificates") or []
    single = material.get("certificate")
    raw = [c["rawBytes"] for c in chain] + ([single["rawBytes"]] if single else [])
    return [base64.b64decode(r) for r in raw]


def in_project(root: Path, path: str | Path) -> Path:
    """``path`` as recorded (relative to the project root, or absolute), made absolute."""
    path = Path(path)
    return path if path.is_absolute() else root / path


def materials_link(expected: Mapping[Any, str | None], found: Mapping[str, str | None], what: str) -> Link:
    """The ``materials`` link of an audit: each material the provenance names (``found``) against
    the ledger's (``expected``); ``what`` says which they are."""
    wrong = [
        f"{name}: provenance says {found.get(name)}, the ledger {want}"
        for name, want in expected.items()
        if found.get(name) != want
    ]
    if wrong:
        return Link("materials", False, "; ".join(wrong))
    return Link("materials", True, f"{len(expected)} provenance materials match the ledger ({what})")
