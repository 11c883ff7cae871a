"""Evidence bundles: one model version's audit, packed so that it verifies offline with Conveyor alone.

``export_evidence`` writes a ``.tar.gz`` holding:

- ``manifest.dsse.json``: a DSSE envelope, signed by the exporting key, of the manifest: the
  version, its registry tags, the audit as it stood at export, the seal, and every other file's
  digest;
- ``signer.pub.pem``: the exporting key (pin it: ``--fingerprint``);
- ``model/``: the verified model files, with their Sigstore bundle and provenance statement, and
  ``model-signer.pub.pem``, the key that signed them;
- ``ledger/record.jsonl``: the version's record (every event upstream of it and every release
  and monitoring event naming it), each with its hash; ``ledger/chain.jsonl``: the events of
  the sealed stretches around them; ``ledger/seal.json``: the seal those stretches end in;
- ``reports/``: every report file the record names (validation, evaluation, drift).

``verify_evidence`` re-checks all of it without a registry, a ledger or a network: the
manifest's signature and files, the chain from each record event to a sealed milestone, the
model's signature and provenance against its files, the tags, and the same record links an
audit checks in a project. The data file itself is not in the bundle; its link is reported as
the audit found it at export.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.policies.errors import ConveyorError
from conveyor.policies.signing import SigningPolicy
from conveyor.registry.audit import AuditReport, Facts, record_links, recorded_files
from conveyor.registry.digests import file_digest, short
from conveyor.registry.keys import PUBLIC, SigningKey, fingerprint
from conveyor.registry.ledger import EventSlice, Ledger, LedgerEvent, utc_now
from conveyor.registry.llm_audit import LIVE_LINKS, is_llm_release
from conveyor.registry.provenance import open_envelope, sign_envelope
from conveyor.registry.seals import Seal, open_seal, seal_ledger
from conveyor.registry.verify import Link, in_project, verify_folder

__all__ = ["EVIDENCE_TYPE", "EvidenceReport", "describe", "export_evidence", "verify_evidence"]

EVIDENCE_TYPE = "application/vnd.conveyor.evidence+json"
FORMAT = "conveyor-evidence/1"
_MANIFEST, _SIGNER, _MODEL_SIGNER = "manifest.dsse.json", "signer.pub.pem", "model-signer.pub.pem"
_README = """Evidence for {name} version {version}, exported {created} by Conveyor.

Verify it, offline, on any machine with Conveyor installed:

    conveyor audit --bundle {archive} --fingerprint {fingerprint}

The fingerprint pins the key that signed this bundle; get it from the exporter through a channel
you trust, not from this file.
"""


@dataclass
class EvidenceReport:
    archive: Path
    name: str | None = None
    version: str | None = None
    signer: str | None = None
    links: list[Link] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.links) and all(link.ok for link in self.links)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.archive),
            "name": self.name,
            "version": self.version,
            "ok": self.ok,
            "signer": self.signer,
            "links": [link.__dict__ for link in self.links],
        }


# -- export ------------------------------------------------------------------------------------


def export_evidence(
    report: AuditReport, ledger: Ledger, out: Path, *, key: SigningKey, trusted: dict[str, bytes], root: Path
) -> Path:
    """Seal the ledger, then write ``out`` (a .tar.gz) for ``report``, whose model files were kept."""
    v = report.verification
    if report.model_dir is None or v.version is None or v.version_digest is None:
        raise ConveyorError(
            f"There is no verified model to export for {report.ref}.", hint="Fix what the audit reports first."
        )
    public = key.public_path.read_bytes()
    seal = seal_ledger(ledger, key.private_key(), key.fingerprint, {**trusted, key.fingerprint: public})
    chain = _stretch_events(ledger, seal, [e.seq for e in report.events])
    with tempfile.TemporaryDirectory(prefix="conveyor-evidence-") as scratch:
        stage = Path(scratch) / "evidence"
        shutil.copytree(report.model_dir, stage / "model")
        if v.signer in trusted:
            (stage / _MODEL_SIGNER).write_bytes(trusted[v.signer])
        (stage / "ledger").mkdir()
        _write_jsonl(stage / "ledger" / "record.jsonl", report.events)
        _write_jsonl(stage / "ledger" / "chain.jsonl", chain)
        (stage / "ledger" / "seal.json").write_text(json.dumps(seal.envelope, sort_keys=True, indent=2))
        reports: dict[str, str] = {}
        for event in report.events:
            for digest, path in recorded_files(event, lambda _event, _key, value: in_project(root, value)).items():
                name = f"reports/{digest.split(':')[1][:16]}-{path.name}"
                (stage / name).parent.mkdir(exist_ok=True)
                shutil.copyfile(path, stage / name)
                reports[digest] = name
        created = utc_now()
        (stage / "README.txt").write_text(
            _README.format(
                name=v.name, version=v.version, created=created, archive=out.name, fingerprint=key.fingerprint
            )
        )
        files = {p.relative_to(stage).as_posix(): file_digest(p) for p in sorted(stage.rglob("*")) if p.is_file()}
        manifest = {
            "format": FORMAT,
            "created": created,
            "name": v.name,
            "version": v.version,
            "version_digest": v.version_digest,
            "model_digest": v.model_digest,
            "model_signer": v.signer,
            "tags": v.tags,
            "audit": report.to_dict(),
            "seal": {"seq": seal.seq, "hash": seal.hash},
            "reports": reports,
            "files": files,
        }
        (stage / _MANIFEST).write_text(json.dumps(sign_envelope(manifest, EVIDENCE_TYPE, key.private_key()), indent=2))
        (stage / _SIGNER).write_bytes(public)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w:gz") as archive:
            archive.add(stage, arcname="evidence")
        partial.replace(out)
    return out


def _stretch_events(ledger: Ledger, seal: Seal, seqs: list[int]) -> list[LedgerEvent]:
    wanted: set[int] = set()
    for seq in seqs:
        if seq <= seal.seq:
            after, _, until, _ = seal.stretch(seq)
            wanted.update(range(after + 1, until + 1))
    return ledger.get_many(wanted)


def _write_jsonl(path: Path, events: list[LedgerEvent]) -> None:
    with path.open("w") as handle:
        for event in events:
            handle.write(json.dumps(event.to_dict(), sort_keys=True) + "\n")


# -- verification -------------------------------------------------------------------------------


def verify_evidence(archive: Path, *, pinned: str | None = None) -> EvidenceReport:
    """Check an evidence bundle offline; ``pinned`` is the exporting key's fingerprint, when known."""
    report = EvidenceReport(archive)
    with tempfile.TemporaryDirectory(prefix="conveyor-evidence-") as scratch:
        try:
            stage = _unpack(archive, Path(scratch))
            manifest, public = _manifest(stage, pinned, report)
        except ConveyorError as exc:
            report.links.append(Link("manifest", False, exc.message))
            return report
        report.name, report.version, report.signer = manifest["name"], str(manifest["version"]), fingerprint(public)
        report.links.append(_files(stage, manifest))
        record = _events(stage / "ledger" / "record.jsonl")
        report.links.append(_chain(stage, manifest, record, {fingerprint(public): public, **_model_signer(stage)}))
        report.links.extend(_model_links(stage, manifest, record))
    return report


def _unpack(archive: Path, into: Path) -> Path:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(into, filter="data")  # refuses absolute paths, links out, devices
    except (OSError, tarfile.TarError) as exc:
        raise ConveyorError(
            f"{archive} is not a readable evidence bundle ({exc}).",
            hint="Export it again with `conveyor audit MODEL/VERSION --export FILE`.",
        ) from None
    stage = into / "evidence"
    if not (stage / _MANIFEST).is_file() or not (stage / _SIGNER).is_file():
        raise ConveyorError(
            f"{archive} has no signed manifest (evidence/{_MANIFEST}, evidence/{_SIGNER}).",
            hint="It is not a Conveyor evidence bundle.",
        )
    return stage


def _manifest(stage: Path, pinned: str | None, report: EvidenceReport) -> tuple[dict[str, Any], bytes]:
    public = (stage / _SIGNER).read_bytes()
    found = fingerprint(public)
    if pinned is not None and found != pinned:
        raise ConveyorError(f"the bundle is signed by key {found}, not the pinned {pinned}")
    try:
        manifest = open_envelope(
            json.loads((stage / _MANIFEST).read_text()), EVIDENCE_TYPE, public, "evidence manifest"
        )
    except ValueError:
        raise ConveyorError(f"{_MANIFEST} is not JSON") from None
    if manifest.get("format") != FORMAT:
        raise ConveyorError(f"the manifest's format is {manifest.get('format')!r}, not {FORMAT!r}")
    how = "pinned" if pinned else "NOT pinned: pass --fingerprint to be sure who signed it"
    report.links.append(Link("manifest", True, f"signed by key {found} ({how})"))
    return manifest, public


def _files(stage: Path, manifest: dict[str, Any]) -> Link:
    listed: dict[str, str] = manifest["files"]
    present = {p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()} - {_MANIFEST, _SIGNER}
    wrong = [f"{name} is missing" for name in sorted(set(listed) - present)]
    wrong += [f"{name} is not in the manifest" for name in sorted(present - set(listed))]
    wrong += [
        f"{name} was changed" for name in sorted(set(listed) & present) if file_digest(stage / name) != listed[name]
    ]
    if wrong:
        return Link("files", False, "; ".join(wrong))
    return Link("files", True, f"{len(listed)} files hash to the signed manifest")


def _events(path: Path) -> list[LedgerEvent]:
    if not path.is_file():
        return []
    return [EventSlice.event_of(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _model_signer(stage: Path) -> dict[str, bytes]:
    path = stage / _MODEL_SIGNER
    return {fingerprint(path.read_bytes()): path.read_bytes()} if path.is_file() else {}


def _chain(stage: Path, manifest: dict[str, Any], record: list[LedgerEvent], trusted: dict[str, bytes]) -> Link:
    """Each record event re-hashes and chains, through the bundled stretch, to a milestone the seal signed."""
    try:
        envelope = json.loads((stage / "ledger" / "seal.json").read_text())
    except (OSError, ValueError):
        return Link("chain", False, "ledger/seal.json is missing or not JSON")
    seal = open_seal(envelope, trusted)
    if seal is None or (seal.seq, seal.hash) != (manifest["seal"]["seq"], manifest["seal"]["hash"]):
        return Link("chain", False, "the seal is not signed by the bundle's keys, or is not the one the manifest names")
    chain = {e.seq: e for e in _events(stage / "ledger" / "chain.jsonl")}
    for event in record:
        if event.computed_hash() != event.hash:
            return Link(
                "chain", False, f"record event #{event.seq} ({event.kind}) no longer matches its hash: it was edited"
            )
        if event.seq > seal.seq or chain.get(event.seq) != event:
            return Link(
                "chain",
                False,
                f"record event #{event.seq} ({event.kind}) is not in the sealed chain the bundle carries",
            )
    stretches = sorted({seal.stretch(e.seq) for e in record})
    for after, after_hash, until, until_hash in stretches:
        prev = after_hash
        for seq in range(after + 1, until + 1):
            held = chain.get(seq)
            if held is None:
                return Link("chain", False, f"event #{seq} is missing from the sealed stretch #{after + 1}-#{until}")
            if held.prev_hash != prev or held.computed_hash() != held.hash:
                return Link("chain", False, f"event #{seq} does not chain: it was edited, moved or inserted")
            prev = held.hash
        if prev != until_hash:
            return Link("chain", False, f"the stretch #{after + 1}-#{until} does not end in the hash the seal signed")
    return Link(
        "chain",
        True,
        f"{len(record)} record events chain to the seal of #{seal.seq:,} ({seal.time}) "
        f"through {len(stretches)} stretch(es), {sum(u - a for a, _, u, _ in stretches):,} events",
    )


def _model_links(stage: Path, manifest: dict[str, Any], record: list[LedgerEvent]) -> list[Link]:
    with tempfile.TemporaryDirectory(prefix="conveyor-keys-") as keys:
        if (stage / _MODEL_SIGNER).is_file():
            shutil.copyfile(stage / _MODEL_SIGNER, Path(keys) / PUBLIC)
        v = verify_folder(
            stage / "model",
            SigningPolicy(),
            root=stage,
            keys_dir=Path(keys),
            name=manifest["name"],
            version=str(manifest["version"]),
            tags=manifest["tags"],
            ledger=EventSlice(tuple(record)),
        )
    if v.version_digest != manifest["version_digest"]:
        v.links.append(
            Link(
                "version",
                False,
                f"the files make version digest {v.version_digest}, the manifest says {manifest['version_digest']}",
            )
        )
    reports = {digest: stage / name for digest, name in manifest["reports"].items()}

    def locate(event: LedgerEvent, _key: str, value: str) -> Path:
        named = [reports[d] for d in event.outputs if d in reports and reports[d].name.endswith(Path(value).name)]
        return named[0] if named else stage / "reports" / "missing" / Path(value).name

    exported = {link["name"]: link for link in manifest["audit"]["links"]}
    live = LIVE_LINKS if is_llm_release(v.tags) else ("data",)  # what reads the exporting machine
    at_export = []
    for name in live:
        found = exported.get(name, {"ok": False, "detail": "not checked at export"})
        where = "not in the bundle" if name == "data" else "reads the exporting machine"
        at_export.append(Link(name, bool(found["ok"]), f"{where}; at export: {found['detail']}"))
    return [*v.links, *at_export, *record_links(v, Facts.of(v.tags, record, stage), record, locate)]


def describe(report: EvidenceReport) -> str:
    """One line for the whole bundle."""
    what = f"{report.name} version {report.version}" if report.name else str(report.archive)
    verdict = "verifies" if report.ok else "does NOT verify"
    return f"Evidence for {what} {verdict} offline (signed by {short(report.signer) if report.signer else 'unknown'})."
