"""Audit one model version end to end: every link from the data file to the last deployment, re-checked.

``verify_version`` already checks the registry, the files, the signature, the provenance
statement, the registry tags and that the ledger recorded the signing and registration. The
audit adds what an auditor asks next:

- ``chain``: the ledger events this version's record rests on are part of an intact chain
  (through the newest trusted seal, see ``registry.seals``; without one, the whole chain);
- ``data``: the data file (or DVC's cached copy) still hashes to the digest recorded when it was
  versioned, and DVC's record agrees;
- ``validation``: the validation report is the one recorded, and it passed, for that data;
- ``features`` and ``training``: the training set came from that data and validation, the model
  from that training set, in the MLflow run the registry names;
- ``materials``: the provenance statement's materials are the digests the ledger recorded;
- ``releases``: every promotion, deployment, canary and rollback event that names this version
  names verified digests and this version's name and number;
- ``reports``: every report file the ledger recorded for this version (validation, evaluation,
  drift) still hashes to its digest.

Never raises for a failed link; each link says what it checked or what is wrong.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.policies.errors import ConveyorError
from conveyor.policies.signing import SigningPolicy
from conveyor.registry.digests import file_digest, file_hashes
from conveyor.registry.dvc_files import dvc_cached, dvc_recorded_md5
from conveyor.registry.events import EventKind, input_of
from conveyor.registry.ledger import Ledger, LedgerEvent
from conveyor.registry.lineage import upstream
from conveyor.registry.llm_audit import is_llm_release, llm_links, llm_record_links
from conveyor.registry.seals import ChainProof, prove_events
from conveyor.registry.store import RegistryView
from conveyor.registry.verify import Link, VerificationReport, in_project, materials_link, trusted_keys, verify_version

__all__ = [
    "REPORT_KEYS",
    "AuditReport",
    "Facts",
    "audit_version",
    "record_links",
    "record_of",
    "recorded_files",
    "trusted_signers",
]

_BUILT_FROM = ("conveyor.data_digest", "conveyor.validation_digest")
RELEASE_KINDS = (
    EventKind.MODEL_PROMOTED,
    EventKind.MODEL_PROMOTION_REFUSED,
    EventKind.MODEL_DEPLOYED,
    EventKind.CANARY_COMPLETED,
    EventKind.CANARY_ROLLED_BACK,
    EventKind.MODEL_ROLLED_BACK,
    EventKind.MODEL_LOAD_REFUSED,
)


@dataclass
class AuditReport:
    ref: str
    verification: VerificationReport
    links: list[Link] = field(default_factory=list)
    events: list[LedgerEvent] = field(default_factory=list)  # the version's record: upstream, then what named it
    proof: ChainProof | None = None
    model_dir: Path | None = None  # the verified files, when kept
    evidence: Path | None = None  # the evidence bundle written with it, if one was asked for
    evidence_key: str | None = None  # ... and the fingerprint of the key that signed it

    @property
    def ok(self) -> bool:
        return bool(self.links) and all(link.ok for link in self.links)

    def to_dict(self) -> dict[str, Any]:
        v = self.verification
        return {
            "ref": self.ref,
            "name": v.name,
            "version": v.version,
            "ok": self.ok,
            "version_digest": v.version_digest,
            "model_digest": v.model_digest,
            "signer": v.signer,
            "links": [link.__dict__ for link in self.links],
            "events": [e.seq for e in self.events],
            "evidence": str(self.evidence) if self.evidence else None,
        }


def trusted_signers(policy: SigningPolicy, root: Path, keys_dir: Path) -> dict[str, bytes]:
    """The public keys (fingerprint -> PEM) the signing policy trusts: they may also sign seals."""
    signers, _ = trusted_keys(policy, root, keys_dir)
    return {s.name: s.public_pem for s in signers}


def audit_version(
    ref: str,
    policy: SigningPolicy,
    *,
    root: Path,
    keys_dir: Path,
    ledger: Ledger,
    keep: Path | None = None,
    registry: RegistryView | None = None,
    weights: Path | None = None,
) -> AuditReport:
    """Check every link of ``ref`` (``MODEL/VERSION`` or ``MODEL@ALIAS``); see the module docstring.
    An LLM release gets its own links (``registry.llm_audit``) instead of the data-to-model ones."""
    folder = keep or Path(tempfile.mkdtemp(prefix="conveyor-audit-"))
    try:
        verification = verify_version(
            ref, policy, root=root, keys_dir=keys_dir, ledger=ledger, keep=folder, registry=registry, weights=weights
        )
        report = AuditReport(ref, verification, model_dir=folder if keep else None)
        _audit(report, ledger, policy, root, keys_dir, folder)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return report


def _audit(
    report: AuditReport, ledger: Ledger, policy: SigningPolicy, root: Path, keys_dir: Path, folder: Path
) -> None:
    v = report.verification
    if v.version_digest is None:  # the version or its files could not be read: nothing more to check
        report.links = list(v.links)
        return
    report.events = record_of(ledger, v.version_digest)
    report.proof = prove_events(ledger, {e.seq for e in report.events}, trusted_signers(policy, root, keys_dir))
    facts = Facts.of(v.tags, report.events, root)
    if is_llm_release(v.tags):
        named = [e for e in report.events if v.version_digest in e.inputs]
        report.links = [
            Link("chain", report.proof.ok, report.proof.detail),
            *v.links,
            *llm_links(v, facts, folder, root),
            _releases(v, named),
            _reports(report.events, lambda _event, _key, value: in_project(root, value)),
        ]
        return
    report.links = [
        Link("chain", report.proof.ok, report.proof.detail),
        *v.links,
        facts.data(),
        *record_links(v, facts, report.events, lambda _event, _key, value: in_project(root, value)),
    ]


def record_of(ledger: Ledger, version_digest: str) -> list[LedgerEvent]:
    """A version's record: everything upstream of it, and the release and monitoring events naming it."""
    with ledger.reading():
        lineage = upstream(ledger, version_digest)
        named = [
            e
            for e in ledger.consumers(version_digest)
            if e.kind in RELEASE_KINDS or e.kind.startswith(("drift.", "quality."))
        ]
    return sorted({e.seq: e for e in (*lineage.events, *named)}.values(), key=lambda e: e.seq)


Locate = Callable[[LedgerEvent, str, str], Path]  # (event, details key, recorded path) -> where the file is now


def record_links(v: VerificationReport, facts: Facts, events: list[LedgerEvent], locate: Locate) -> list[Link]:
    """The links checked from the ledger's record alone (no registry, no data): the same in a project
    and in an evidence bundle."""
    named = [e for e in events if v.version_digest in e.inputs]
    if is_llm_release(facts.tags):
        return [*llm_record_links(v, facts), _releases(v, named), _reports(events, locate)]
    return [
        facts.validation(),
        facts.features(),
        facts.training(),
        _materials(v, facts),
        _releases(v, named),
        _reports(events, locate),
    ]


@dataclass
class Facts:
    """The producing events of this version's artifacts, found by the digests its registry tags name."""

    tags: dict[str, str]
    by_output: dict[str, list[LedgerEvent]]
    root: Path

    @classmethod
    def of(cls, tags: dict[str, str], events: list[LedgerEvent], root: Path) -> Facts:
        by_output: dict[str, list[LedgerEvent]] = {}
        for event in events:
            for digest in event.outputs:
                by_output.setdefault(digest, []).append(event)
        return cls(tags, by_output, root)

    def made(self, tag: str, kind: str, needs: tuple[str, ...] = ()) -> tuple[str | None, LedgerEvent | None]:
        """The digest a registry tag names and the event of ``kind`` that made it: one whose inputs include
        the digests the tags in ``needs`` name when there is one (the same content can be made twice)."""
        digest = self.tags.get(tag)
        found = [e for e in self.by_output.get(digest or "", []) if e.kind == kind]
        wanted = {self.tags.get(t) for t in needs}
        fitting = [e for e in found if wanted <= set(e.inputs)]
        chosen = fitting or found
        return digest, chosen[-1] if chosen else None

    def data(self) -> Link:
        digest, event = self.made("conveyor.data_digest", EventKind.DATASET_VERSIONED)
        if event is None:
            return Link("data", False, f"no dataset.versioned event records the data {digest}")
        path = in_project(self.root, event.details.get("path", ""))
        md5 = event.details.get("md5")
        source = path if path.is_file() else dvc_cached(self.root, md5)
        if source is None:
            return Link(
                "data",
                False,
                f"{path} is gone and DVC's cache has no copy of md5 {md5}: run `dvc pull` or `dvc checkout`",
            )
        hashes = file_hashes(source, "md5")
        if hashes["sha256"] != digest:
            return Link(
                "data", False, f"{source} hashes to {hashes['sha256']}, not the recorded {digest}: the data was changed"
            )
        if hashes["md5"] != md5:
            return Link("data", False, f"{source} has md5 {hashes['md5']}, but the ledger recorded {md5}")
        try:
            tracked = dvc_recorded_md5(path)
        except ConveyorError as exc:
            return Link("data", False, exc.message)
        if tracked is not None and tracked != md5:
            return Link(
                "data",
                False,
                f"{path.name}.dvc now records md5 {tracked}, not {md5}: DVC's record was changed "
                "(or the data re-versioned) since this model was trained",
            )
        where = "DVC's cache" if source != path else str(event.details.get("path"))
        dvc = "tracked by DVC, record agrees" if tracked else "not tracked by DVC"
        return Link("data", True, f"{where} hashes to {digest} (event #{event.seq}); {dvc}")

    def data_path(self) -> str | None:
        _, event = self.made("conveyor.data_digest", EventKind.DATASET_VERSIONED)
        return event.details.get("path") if event else None

    def validation(self) -> Link:
        digest, event = self.made("conveyor.validation_digest", EventKind.DATA_VALIDATED, ("conveyor.data_digest",))
        data = self.tags.get("conveyor.data_digest")
        if event is None:
            return Link("validation", False, f"no data.validated event produced the validation report {digest}")
        if data not in event.inputs:
            return Link("validation", False, f"event #{event.seq} validated other data, not {data}")
        if event.details.get("success") is not True:
            return Link("validation", False, f"event #{event.seq} records a failed validation")
        return Link(
            "validation",
            True,
            f"passed {event.details.get('evaluated')} expectations on this data (event #{event.seq})",
        )

    def features(self) -> Link:
        digest, event = self.made("conveyor.training_set", EventKind.FEATURES_BUILT, _BUILT_FROM)
        wanted = [self.tags.get("conveyor.data_digest"), self.tags.get("conveyor.validation_digest")]
        if event is None:
            return Link("features", False, f"no features.built event produced the training set {digest}")
        missing = [d for d in wanted if d not in event.inputs]
        if missing:
            return Link(
                "features",
                False,
                f"event #{event.seq} built the training set from other inputs (lacks {', '.join(map(str, missing))})",
            )
        return Link("features", True, f"training set {digest} built from this data and validation (event #{event.seq})")

    def training(self) -> Link:
        model = self.tags.get("conveyor.model_digest")
        found = [e for e in self.by_output.get(model or "", []) if e.kind == EventKind.MODEL_TRAINED]
        if not found:
            return Link("training", False, f"no model.trained event produced the model {model}")
        event = found[-1]
        if self.tags.get("conveyor.training_set") not in event.inputs:
            return Link("training", False, f"event #{event.seq} trained on another training set")
        if event.details.get("run_id") != self.tags.get("conveyor.run_id"):
            return Link(
                "training",
                False,
                f"event #{event.seq} names MLflow run {event.details.get('run_id')}, the registry {self.tags.get('conveyor.run_id')}",
            )
        return Link("training", True, f"trained in MLflow run {event.details.get('run_id')} (event #{event.seq})")


def _materials(v: VerificationReport, facts: Facts) -> Link:
    if v.statement is None:
        return Link("materials", False, "no verified provenance statement to compare")
    materials = {
        d.get("uri", ""): d.get("digest", {})
        for d in v.statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    }
    trained = [e for e in facts.by_output.get(v.model_digest or "", []) if e.kind == EventKind.MODEL_TRAINED]
    _, built = facts.made("conveyor.training_set", "features.built", _BUILT_FROM)
    expected = {
        "data": facts.tags.get("conveyor.data_digest"),
        "validation report": facts.tags.get("conveyor.validation_digest"),
        "training-set": facts.tags.get("conveyor.training_set"),
        "feature-definitions": input_of(built, "feature_definitions") if built else None,
        "project config": input_of(trained[-1], "config") if trained else None,
    }
    found = {
        "data": _material(materials, lambda uri: uri == facts.data_path()),
        "validation report": _material(materials, lambda uri: uri.endswith(".json") and "validation" in uri),
        "training-set": _material(materials, lambda uri: uri == "training-set"),
        "feature-definitions": _material(materials, lambda uri: uri == "feature-definitions"),
        "project config": _material(materials, lambda uri: uri.endswith((".yaml", ".yml"))),
    }
    return materials_link(expected, found, "data, validation, training set, features, config")


def _material(materials: dict[str, dict[str, str]], match: Any) -> str | None:
    hits = [f"sha256:{d['sha256']}" for uri, d in materials.items() if "sha256" in d and match(uri)]
    return hits[0] if len(hits) == 1 else None


def _releases(v: VerificationReport, named: list[LedgerEvent]) -> Link:
    """Every release event naming this version: same name and number in its details."""
    releases = [e for e in named if e.kind in RELEASE_KINDS]
    wrong = []
    for event in releases:
        name, version = event.details.get("name"), str(event.details.get("version", ""))
        if event.kind == EventKind.MODEL_ROLLED_BACK:
            ok = name == v.name and v.version in (str(event.details.get("from")), str(event.details.get("to")))
        else:
            ok = name == v.name and version == v.version
        if not ok:
            wrong.append(f"#{event.seq} {event.kind} names {name} version {version or '?'}")
    if wrong:
        return Link("releases", False, "events name this version's digest for another version: " + "; ".join(wrong))
    kinds = sorted({e.kind.removeprefix("model.") for e in releases})
    return Link(
        "releases",
        True,
        f"{len(releases)} release events name this verified version" + (f" ({', '.join(kinds)})" if kinds else ""),
    )


def recorded_files(event: LedgerEvent, locate: Locate) -> dict[str, Path]:
    """The report files an event recorded by path in its details (digest -> where it is now), for
    those that still hash to one of its output digests."""
    found: dict[str, Path] = {}
    for key, value in event.details.items():
        if key in REPORT_KEYS and isinstance(value, str) and value:
            path = locate(event, key, value)
            if path.is_file() and (digest := file_digest(path)) in event.outputs:
                found[digest] = path
    return found


def _reports(events: list[LedgerEvent], locate: Locate) -> Link:
    """Each report an event recorded by path (validation, evaluation, drift) still hashes to its output digest."""
    checked, wrong = 0, []
    for event in events:
        found = recorded_files(event, locate)
        for key, value in event.details.items():
            if key not in REPORT_KEYS or not isinstance(value, str) or not value:
                continue
            path = locate(event, key, value)
            if not path.is_file():
                wrong.append(f"#{event.seq} {event.kind}: its {key} {value} is gone")
            elif path not in found.values():
                wrong.append(
                    f"#{event.seq} {event.kind}: its {key} {value} hashes to {file_digest(path)}, which the event did not record"
                )
            else:
                checked += 1
    if wrong:
        return Link("reports", False, "; ".join(wrong))
    return Link("reports", True, f"{checked} recorded report files hash to their digests")


REPORT_KEYS = ("report", "html", "snapshot")  # details naming a file whose digest is an output
