"""Conveyor from Python: the same verbs as the command line, on a ``Workspace``.

    import conveyor

    ws = conveyor.Workspace.open(".")               # a project folder, or its conveyor.yaml
    ws.validate()                                   # -> ValidationResult (raises ValidationFailed)
    trained = ws.train()                            # -> TrainingOutcome
    ws.verify("loan-default@candidate")             # -> VerificationReport (.ok, .links)
    ws.promote("loan-default@candidate", to="champion")   # -> PromotionOutcome (.decision)
    ws.lineage("loan-default@champion", up=True)    # -> LineageResult (.start, .walks)
    ws.audit("loan-default@champion")               # -> AuditReport (.ok, .links)

Each returns the typed result the command prints (and ``--json`` serialises); a refusal the
command exits 1 for is a result with ``ok`` false, a mistake is a ``ConveyorError``. Opening a
Workspace reads the settings (environment, the project file's ``settings:``, defaults) and
changes nothing; the first verb that needs the stores prepares the process for them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.policies.errors import ConfigInvalid, ConveyorError, NotFound
from conveyor.registry.loading import verified_copy
from conveyor.registry.weights import resolve_weights, store_state
from conveyor.registry.workspace import Workspace as Stores

if TYPE_CHECKING:
    from conveyor.pipelines.llm.flow import ReleaseOutcome
    from conveyor.pipelines.llm.loop import AcceptOutcome, FeedbackOutcome, LlmCheckOutcome
    from conveyor.pipelines.retraining import DriftOutcome, LabelsOutcome
    from conveyor.pipelines.training import TrainingOutcome
    from conveyor.pipelines.triggers import TriggerOutcome
    from conveyor.pipelines.validate import ValidationResult
    from conveyor.registry.audit import AuditReport
    from conveyor.registry.evidence import EvidenceReport
    from conveyor.registry.ledger import ChainReport
    from conveyor.registry.lineage import Lineage
    from conveyor.registry.lookup import Start
    from conveyor.registry.release import PromotionOutcome
    from conveyor.registry.seals import Seal
    from conveyor.registry.verify import VerificationReport
    from conveyor.serving.answer import Reply

__all__ = ["LedgerAudit", "LineageResult", "Workspace", "verify_bundle"]


@dataclass(frozen=True)
class LineageResult:
    """Where a lineage query started and what it found, one walk per direction."""

    start: Start
    walks: list[Lineage]

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.label,
            "note": self.start.note,
            "digests": list(self.start.digests),
            **{w.direction: w.to_dict() for w in self.walks},
        }


@dataclass(frozen=True)
class LedgerAudit:
    """The ledger's whole chain, checked; and the seal made on it, when asked for."""

    chain: ChainReport
    ledger: str  # the ledger's URL, without a password
    sealed: Seal | None = None  # the seal made now
    newest_seal: Seal | None = None  # the newest trusted seal the chain was held to
    seal_file: Path | None = None  # a copy of the seal made now, to keep outside the ledger's database

    @property
    def ok(self) -> bool:
        return self.chain.ok

    def to_dict(self) -> dict[str, Any]:
        body = {k: v for k, v in self.chain.__dict__.items() if k != "milestones"}
        newest = self.newest_seal
        return {
            "ledger": self.ledger,
            **body,
            "sealed": self.sealed.seq if self.sealed else None,
            "seal_file": str(self.seal_file) if self.seal_file else None,
            "newest_seal": {"seq": newest.seq, "time": newest.time, "signer": newest.signer} if newest else None,
            "events_since_seal": self.chain.events - newest.seq if newest and self.chain.ok else None,
        }


class Workspace:
    """A project and its stores, with the verbs of the command line.

    The verbs are all it shows. What they run on (settings, paths, the registry, the ledger, the
    policies) is ``stores``: the plumbing, for code that needs it (``conveyor.registry.Workspace``).
    """

    __slots__ = ("stores",)

    def __init__(self, stores: Stores) -> None:
        self.stores = stores

    @classmethod
    def open(cls, path: str | Path | None = None, **overrides: Any) -> Workspace:
        """The project at ``path`` (a folder holding ``conveyor.yaml``, or the config file itself);
        without it, ``$CONVEYOR_PROJECT_FILE``, else ``./conveyor.yaml``. ``overrides`` are settings
        (``home``, ``ledger_url``, ``mlflow_tracking_uri``, ``actor``, ...) ahead of the
        environment and the project file. Opening changes nothing."""
        return cls(Stores.open(path, **overrides))

    def __repr__(self) -> str:
        return f"Workspace({str(self.stores.project_file)!r})"

    @property
    def root(self) -> Path:
        """The project's folder."""
        return self.stores.root

    @property
    def project_file(self) -> Path:
        return self.stores.project_file

    @property
    def home(self) -> Path:
        """Where the embedded stores, reports and keys live (``.conveyor/`` by default)."""
        return self.stores.home

    @property
    def model_name(self) -> str:
        """The project's model (a tabular model's name, or an LLM release's)."""
        return self.stores.model_name

    def _ready(self) -> Stores:
        """The stores, the process prepared for them once (the command line prepares it first)."""
        return self.stores if self.stores.prepared else self.stores.prepare()

    # -- data and training ---------------------------------------------------------------------

    def validate(self, data: str | Path | None = None) -> ValidationResult:
        """Version the data and validate it against its suite; raises ``ValidationFailed`` naming each failure."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.pipelines.training import validate_only

        return validate_only(self._ready(), data)

    def train(self, data: str | Path | None = None) -> TrainingOutcome:
        """Validate, build features, train, evaluate, sign and register (``@candidate``)."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.pipelines.training import training_flow

        return training_flow(self._ready(), data)

    # -- LLM releases --------------------------------------------------------------------------

    def build_release(self) -> ReleaseOutcome:
        """The LLM release flow on this project (``kind: llm``): weights, prompt, build, evaluate, sign, register."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.pipelines.llm.flow import release_flow

        self._require_llm()
        return release_flow(self._ready())

    def check_llm(self, window: str | None = None, *, act: bool = True) -> LlmCheckOutcome:
        """The LLM champion's live traffic against its evaluation (feedback posted to the gateway
        recorded first); a breach re-evaluates the champion on the grown sets (``act``)."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.pipelines.llm.loop import check_llm

        self._require_llm()
        return check_llm(self._ready(), window, start=act)

    def check_knowledge(self, *, act: bool = True) -> tuple[str, TriggerOutcome | None]:
        """Whether the knowledge base is the champion's; a new version starts a rebuild (``act``)."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.pipelines.llm.loop import check_knowledge

        self._require_llm()
        return check_knowledge(self._ready(), start=act)

    def add_feedback(self, path: str | Path) -> FeedbackOutcome:
        """Ratings of answers (JSONL or CSV): recorded, joined to the log, bad ones made candidate cases."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.pipelines.llm.loop import add_feedback

        self._require_llm()
        return add_feedback(self._ready(), Path(path))

    def accept_feedback(self, path: str | Path) -> AcceptOutcome:
        """The reviewed candidates file's accepted cases added to the project's feedback set."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.pipelines.llm.loop import accept_feedback

        self._require_llm()
        return accept_feedback(self._ready(), Path(path))

    def ask(self, ref: str, question: str) -> Reply:
        """Verify the LLM release ``ref`` into a private copy, load it from there in this process and
        answer ``question`` through its guardrails."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.serving.answer import LlmRelease

        self._ready()
        with (
            self.stores.ledger() as ledger,
            verified_copy(self.stores, ref, ledger, what="The release") as (report, folder),
        ):
            if report.tags.get("conveyor.kind") != "llm-release":
                raise ConveyorError(f"{ref} is not an LLM release.", hint="`llm ask` answers with LLM releases only.")
            return LlmRelease.open(folder).answer(question)

    def repair_weights(self) -> tuple[Path, str]:
        """The LLM project's weights in the store checked, and rebuilt from the installed package
        when they are damaged or missing (refused when the package itself no longer verifies):
        (the store's file, what was done)."""
        self._require_llm()
        project = self.stores.llm_project()
        before = store_state(self.stores.weights_store, project.model.sha256)
        weights = resolve_weights(project.model, self.stores.weights_store, lock=self.stores.root / "uv.lock")
        done = {"intact": "intact: nothing to do", "missing": "missing: copied from the package"}.get(
            before, "damaged: rebuilt from the package, which still verifies"
        )
        return weights.path, done

    def _require_llm(self) -> None:

        if not self.stores.is_llm:
            raise ConfigInvalid(
                f"{self.stores.project_file} is not an LLM project (it has no `kind: llm`).",
                hint="Pass the LLM project's file: `conveyor --config assistant.yaml llm build`.",
            )

    # -- release -------------------------------------------------------------------------------

    def verify(self, ref: str) -> VerificationReport:
        """Every link of ``MODEL/VERSION`` or ``MODEL@ALIAS``: signature, provenance, tags, ledger."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.registry.registration import reconcile
        from conveyor.registry.verify import parse_ref

        self._ready()
        with self.stores.ledger() as ledger:
            reconcile(self.stores.mlflow(), ledger, self.stores.home, parse_ref(ref)[0])
            return self.stores.verify_ref(ref, ledger)

    def promote(
        self, ref: str, *, to: str, dry_run: bool = False, force_after_rollback: int | None = None
    ) -> PromotionOutcome:
        """Verify ``ref``, decide by ``policies/promotion.yaml``, move ``to`` (canary or champion).

        A version whose canary was rolled back is refused unless ``force_after_rollback`` is that
        rollback's ledger event number."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.pipelines.release import score_champion
        from conveyor.registry.release import promote

        if to not in ("canary", "champion"):
            raise ConveyorError(
                f"--to must be canary or champion, not {to!r}.", hint="Promote to canary first, then to champion."
            )
        return promote(
            self._ready(),
            ref,
            to,
            dry_run=dry_run,
            score_champion=score_champion,
            force_after_rollback=force_after_rollback,
        )

    def rollback(self, model: str | None = None, *, dry_run: bool = False) -> tuple[str, str]:
        """Point ``@champion`` back at ``@previous-champion``; returns (from version, to version).
        With ``dry_run``, only says so: nothing changes, nothing is recorded."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.registry.release import rollback

        return rollback(self._ready(), model or self.stores.model_name, dry_run=dry_run)

    # -- the record ----------------------------------------------------------------------------

    def lineage(
        self,
        target: str | None = None,
        *,
        at: str | None = None,
        model: str | None = None,
        up: bool = False,
        down: bool = False,
        depth: int | None = None,
    ) -> LineageResult:
        """Where ``target`` came from (``up``) and what it fed (``down``; both when neither is given).

        ``target``: a file (hashed), a digest, ``MODEL/VERSION``, ``MODEL@ALIAS``, ``deployment:N``,
        ``event:N`` or ``request:ID``; or ``at`` a time: what was serving then."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.registry.lineage import walk
        from conveyor.registry.lookup import find_start, parse_time, serving_at

        if (target is None) == (at is None):
            raise ConveyorError(
                "Say where to start: a TARGET or --at TIME (one of them).",
                hint="e.g. `conveyor lineage loan-default@champion` or `conveyor lineage --at 2026-11-21T14:30`.",
            )
        directions = ["upstream"] * (up or not down) + ["downstream"] * (down or not up)
        with self.stores.ledger() as ledger:
            if at is not None:
                start = serving_at(ledger, parse_time(at), model)
            else:
                start = find_start(
                    str(target), ledger, inference=self.stores.inference_dir(), tracking_uri=self.stores.tracking_uri
                )
            walks = [walk(ledger, start.digests, d, depth) for d in directions]  # type: ignore[arg-type]
        if not any(w.events for w in walks):
            raise NotFound(
                f"The ledger has no event that names {start.label}.",
                hint="It was never recorded by Conveyor, or the file changed since (new content, new "
                "digest): `conveyor demo` or `conveyor train` record data when they use it.",
            )
        return LineageResult(start, walks)

    def status(self, model: str | None = None) -> dict[str, Any]:
        """Versions, aliases, the last deployment per role, the canary and its last verdict, the
        last drift and quality checks and the ledger's last seal, each with its ledger event."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.registry.status import model_status

        return model_status(self._ready(), model or self.stores.model_name)

    def audit(self, ref: str, *, export: str | Path | None = None) -> AuditReport:
        """Re-verify the whole record of ``ref``, link by link; with ``export``, also write an evidence bundle."""
        import tempfile

        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.registry.audit import audit_version
        from conveyor.registry.evidence import export_evidence
        from conveyor.registry.seals import project_trust

        self._ready()
        with self.stores.ledger() as ledger, tempfile.TemporaryDirectory(prefix="conveyor-audit-") as keep:
            report = audit_version(
                ref,
                self.stores.signing(),
                root=self.stores.root,
                keys_dir=self.stores.keys_dir,
                ledger=ledger,
                keep=Path(keep),
                registry=self.stores.registry(),
                weights=self.stores.weights_store,
            )
            if export is not None and report.verification.version_digest is not None:
                key, trusted = project_trust(self.stores)
                report.evidence = export_evidence(
                    report, ledger, Path(export), key=key, trusted=trusted, root=self.stores.root
                )
                report.evidence_key = key.fingerprint
        return report

    def audit_ledger(self, *, seal: bool = False, against: Sequence[str | Path] = ()) -> LedgerAudit:
        """Check the ledger's whole chain, held to every seal (the stored ones, and the seal files
        ``against`` names, kept outside the ledger's database); with ``seal``, sign a checkpoint of
        it when it holds, and write a copy of that seal under ``home/seals/``."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.registry.seals import MILESTONE_EVERY, check_seals, known_trust, seal_with_project_key

        external = [_seal_file(Path(p)) for p in against]
        trusted = known_trust(self.stores)
        with self.stores.ledger() as ledger:
            chain = ledger.verify_chain(milestone_every=MILESTONE_EVERY if seal else None)
            chain, newest = check_seals(ledger, chain, trusted, external)
            if not (seal and chain.ok):
                return LedgerAudit(chain, ledger.display_url, None, newest)
            sealed = seal_with_project_key(self.stores, ledger, chain)
            copy = self.stores.home / "seals" / f"seal-{sealed.seq}.json"
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(json.dumps(sealed.envelope, indent=2) + "\n", encoding="utf-8")
            return LedgerAudit(chain, ledger.display_url, sealed, sealed, copy)

    def seal(self) -> Seal:
        """Check the whole chain, then seal it with the project key."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.registry.seals import seal_with_project_key

        with self.stores.ledger() as ledger:
            return seal_with_project_key(self.stores, ledger)

    # -- monitoring ----------------------------------------------------------------------------

    def drift(self, window: str | None = None, *, retrain: bool = True) -> DriftOutcome:
        """Check the champion's traffic over ``window``; a breach starts a retraining unless ``retrain`` is false."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.pipelines.loop import drift_flow

        return drift_flow(self._ready(), window, start=retrain)

    def add_labels(self, path: str | Path, *, retrain: bool = True) -> LabelsOutcome:
        """Join ground truth to logged predictions and judge quality; a breach starts a retraining."""
        # here: each verb loads only what it runs (a quick verb never loads training)
        from conveyor.pipelines.loop import labels

        return labels(self._ready(), Path(path), start=retrain)


def _seal_file(path: Path) -> dict[str, Any]:
    """A seal's envelope from a file kept outside the ledger's database (``home/seals/seal-N.json``)."""
    try:
        envelope = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConveyorError(
            f"{path} is not a readable seal file: {exc}.",
            hint="Give a file that `conveyor audit --ledger --seal` wrote under .conveyor/seals/.",
        ) from None
    if not isinstance(envelope, dict) or "payload" not in envelope:
        raise ConveyorError(f"{path} holds no seal envelope.", hint="Give a seal file (.conveyor/seals/seal-N.json).")
    return envelope


def verify_bundle(bundle: str | Path, *, fingerprint: str | None = None) -> EvidenceReport:
    """Verify an evidence bundle offline: no project, registry, ledger or network needed."""
    # here: each verb loads only what it runs (a quick verb never loads training)
    from conveyor.registry.evidence import verify_evidence

    return verify_evidence(Path(bundle), pinned=fingerprint)
