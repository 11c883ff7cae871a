"""Release: verify a version, judge it by the promotion policy, move an alias, record it; roll back.

Promotions of one model are serialised by a lock file in Conveyor's home, so two at once leave
one consistent alias state and one ledger entry each. ``previous-champion`` always points at the
champion a promotion replaced, which is what ``rollback`` restores.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from conveyor.policies.errors import ConveyorError, NotFound, RegistryError, SignatureInvalid
from conveyor.policies.promotion import Candidate, Decision, decide_promotion
from conveyor.registry.digests import json_digest
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger
from conveyor.registry.loading import make_read_only
from conveyor.registry.locks import file_lock
from conveyor.registry.registration import reconcile
from conveyor.registry.verify import VerificationReport, parse_ref, what_registry_has
from conveyor.registry.workspace import Workspace

__all__ = [
    "CANARY",
    "CHAMPION",
    "PREVIOUS",
    "ChampionScorer",
    "PromotionOutcome",
    "ServingAliases",
    "alias",
    "promote",
    "retire_canary",
    "rollback",
]

CHAMPION, PREVIOUS, CANARY, CANDIDATE = "champion", "previous-champion", "canary", "candidate"


@dataclass(frozen=True)
class PromotionOutcome:
    name: str
    version: str | None
    target: str
    decision: Decision
    dry_run: bool
    previous: str | None  # the version the alias pointed at before
    event: int | None  # the ledger event that recorded it
    verification: VerificationReport

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.decision.ok,
            "name": self.name,
            "version": self.version,
            "target": self.target,
            "dry_run": self.dry_run,
            "previous": self.previous,
            "reasons": self.decision.reasons,
            "ledger_event": self.event,
            "verification": self.verification.to_dict(),
        }


# Scores champion version ``champion`` on the holdout of the candidate ``report`` describes
# (None when that holdout cannot be found intact); the pipelines provide one.
# (workspace, the candidate's verification, the champion's version, the candidate's verified files)
ChampionScorer = Callable[[Workspace, VerificationReport, str, Path], "dict[str, float] | None"]


def promote(
    ws: Workspace,
    ref: str,
    target: str,
    *,
    dry_run: bool = False,
    score_champion: ChampionScorer | None = None,
    force_after_rollback: int | None = None,
    canary_passed: bool = False,
) -> PromotionOutcome:
    """Verify ``ref``, decide by the promotion policy, and (unless ``dry_run``) move ``target`` to it.

    ``score_champion`` scores the champion on the candidate's holdout when training did not
    record that comparison (the pipelines provide one); without it the comparison is unknown.
    A version whose canary was rolled back is refused unless ``force_after_rollback`` names that
    rollback's ledger event (the decision records it). ``canary_passed``: the service's live
    analysis of this version as canary has just passed (a gain the holdout cannot tell from noise
    may then become champion)."""
    loaded = ws.policy("promotion")
    policy = loaded.value
    client = ws.mlflow()
    with (
        ws.ledger() as ledger,
        file_lock(ws.home, "release-" + ref.split("@")[0].split("/")[0]),
        tempfile.TemporaryDirectory(prefix="conveyor-candidate-") as scratch,
    ):
        files = Path(scratch) / "files"  # the candidate's verified bytes: what scoring loads, if it must
        reconcile(client, ledger, ws.home, parse_ref(ref)[0])  # a registration that died half-way is marked
        report = ws.verify_ref(ref, ledger, keep=files)
        if report.ok:
            make_read_only(files)
        name, version = report.name, report.version
        if version is None:  # a usage mistake, not a refusal
            raise RegistryError(report.links[0].detail, hint=what_registry_has(client, parse_ref(ref)[0]))
        champion = alias(client, name, CHAMPION)
        llm = report.tags.get("conveyor.kind") == "llm-release"
        if llm and policy.llm is not None:
            policy = policy.llm.as_policy(policy.targets, policy.require)  # judged by the `llm` section
        if llm and loaded.value.llm is None:
            decision = Decision(False, [f"{loaded.path} has no `llm` section to judge an LLM release by"])
        elif target not in policy.targets:
            decision = Decision(False, [f"the promotion policy does not allow promotion to {target}"])
        elif not report.ok:
            failed = report.first_failure
            assert failed is not None  # the report is not ok: some link failed
            decision = Decision(False, [f"verification failed at the {failed.name} link: {failed.detail}"])
        else:
            try:
                candidate = _candidate(ws, ledger, client, report, champion, score_champion, files)
            except SignatureInvalid as exc:  # the comparison needs the champion: refused, not made without it
                decision = Decision(False, [f"{exc.message} {exc.hint or ''}".strip()])
            else:
                decision = decide_promotion(candidate, champion, policy, target=target, canary_passed=canary_passed)
            decision = _after_rollback(ledger, name, version, decision, force_after_rollback)
        previous = alias(client, name, target) if version else None
        if dry_run:
            return PromotionOutcome(name, version, target, decision, dry_run, previous, None, report)
        if decision.ok:
            _move(client, name, version, target, champion)
        event = ledger.append(
            EventKind.MODEL_PROMOTED if decision.ok else EventKind.MODEL_PROMOTION_REFUSED,
            inputs={"version": report.version_digest, "policy": loaded.digest},
            outputs=[json_digest({"decision": asdict(decision), "target": target, "version": version})],
            details={
                "name": name,
                "version": version,
                "target": target,
                "ok": decision.ok,
                "reasons": decision.reasons,
                "previous": previous,
                "champion_before": champion,
                "policy": str(loaded.path),
                **({"forced_after_rollback": force_after_rollback} if force_after_rollback is not None else {}),
            },
        )
    return PromotionOutcome(name, version, target, decision, False, previous, event.seq, report)


def _after_rollback(ledger: Ledger, name: str, version: str, decision: Decision, forced: int | None) -> Decision:
    """``decision``, refused if the version's canary was rolled back and the promotion does not name that rollback."""
    rolled_back = next(
        (
            e
            for e in ledger.latest([EventKind.CANARY_ROLLED_BACK], limit=1_000, model=name)
            if str(e.details.get("version")) == version
        ),
        None,
    )
    if rolled_back is None or _overridden(ledger, name, version, rolled_back.seq):
        return decision
    why = "; ".join(rolled_back.details.get("reasons") or []) or "no reason recorded"
    if forced == rolled_back.seq:
        note = f"its canary was rolled back (event #{rolled_back.seq}: {why}); promoted anyway, as --force named it"
        return Decision(decision.ok, [*decision.reasons, note])
    return Decision(
        False,
        [
            *decision.reasons,
            f"its canary was rolled back (event #{rolled_back.seq}: {why}); to promote it anyway, "
            f"name that rollback: --force --rollback {rolled_back.seq}",
        ],
    )


def _overridden(ledger: Ledger, name: str, version: str, rollback: int) -> bool:
    """Whether a promotion of ``version`` since has named rollback ``rollback`` with --force."""
    return any(
        e.seq > rollback
        and str(e.details.get("version")) == version
        and e.details.get("forced_after_rollback") == rollback
        for e in ledger.latest([EventKind.MODEL_PROMOTED], limit=1_000, model=name)
    )


def rollback(
    ws: Workspace, name: str, *, to: str | None = None, cause: str | None = None, dry_run: bool = False
) -> tuple[str, str]:
    """Point ``champion`` back at ``previous-champion`` (or at version ``to``, a former champion
    chosen by the caller); returns (from version, to version). ``cause`` (a digest) is recorded.
    ``dry_run``: the same checks and answer, with nothing changed or recorded."""
    client = ws.mlflow()
    with file_lock(ws.home, f"release-{name}"):
        current, previous = alias(client, name, CHAMPION), alias(client, name, PREVIOUS)
        previous = to or previous
        if previous is None:
            raise NotFound(
                f"{name} has no previous champion to roll back to.",
                hint="Promote a version with `conveyor promote` first.",
            )
        if dry_run:
            _version_digest(client, name, previous)  # the version exists
            return str(current), previous
        try:
            client.set_registered_model_alias(name, CHAMPION, previous)
            if alias(client, name, PREVIOUS) == previous:
                client.delete_registered_model_alias(name, PREVIOUS)
        except Exception as exc:
            raise RegistryError(
                f"The registry refused the rollback of {name}: {exc}.", hint="Check the tracking URI."
            ) from None
        # Both versions are inputs: a rollback uses them, it does not make either.
        inputs = {
            "from_version": _version_digest(client, name, current) if current else None,
            "to_version": _version_digest(client, name, previous),
            "cause": cause,
        }
        with ws.ledger() as ledger:
            ledger.append(
                EventKind.MODEL_ROLLED_BACK,
                inputs=inputs,
                outputs=[],
                details={"name": name, "from": current, "to": previous},
            )
    return str(current), previous


# -- facts for the decision --------------------------------------------------------------------


def _candidate(
    ws: Workspace,
    ledger: Ledger,
    client: Any,
    report: VerificationReport,
    champion: str | None,
    score_champion: ChampionScorer | None,
    files: Path,
) -> Candidate:
    run = client.get_run(report.tags["conveyor.run_id"])
    prefix = _metric_prefix(report)
    metrics = {k.removeprefix(prefix): v for k, v in run.data.metrics.items() if k.startswith(prefix)}
    return Candidate(
        name=report.name,
        version=str(report.version),
        signature_verified=report.ok,
        validation_passed=_validation_passed(ledger, report.tags.get("conveyor.validation_digest")),
        clean_tree=_clean_tree(report.statement),
        size_bytes=report.size_bytes,
        metrics=metrics,
        champion_metrics=_champion_metrics(ws, client, report, champion, score_champion, files)
        if champion and champion != report.version
        else None,
    )


def _metric_prefix(report: VerificationReport) -> str:
    """Where the version's own figures are on its MLflow run: its holdout, or an LLM release's evaluation."""
    return "eval_" if report.tags.get("conveyor.kind") == "llm-release" else "holdout_"


def _validation_passed(ledger: Ledger, digest: str | None) -> bool:
    events = [e for e in ledger.producers(digest) if e.kind == EventKind.DATA_VALIDATED] if digest else []
    return bool(events) and events[-1].details.get("success") is True


def _clean_tree(statement: dict[str, Any] | None) -> bool | None:
    if statement is None:
        return None
    byproducts = {b["name"]: b.get("content", "") for b in statement["predicate"]["runDetails"].get("byproducts", [])}
    if "code_dirty" not in byproducts:
        return None
    dirty = json.loads(base64.b64decode(byproducts["code_dirty"]) or b"null")
    return None if dirty is None else not dirty


def _champion_metrics(
    ws: Workspace,
    client: Any,
    report: VerificationReport,
    champion: str,
    score_champion: ChampionScorer | None,
    files: Path,
) -> dict[str, float] | None:
    """The champion's metrics on the candidate's holdout: recorded at training when that champion
    was already champion, otherwise scored now by ``score_champion`` (if there is one)."""
    run = client.get_run(report.tags["conveyor.run_id"])
    if run.data.tags.get("conveyor.champion_version") == champion:
        return {k.removeprefix("champion_"): v for k, v in run.data.metrics.items() if k.startswith("champion_")}
    return None if score_champion is None else score_champion(ws, report, champion, files)


# -- registry moves ------------------------------------------------------------------------------


def _move(client: Any, name: str, version: str, target: str, champion: str | None) -> None:
    try:
        if target == CHAMPION:
            if champion is not None and champion != version:
                client.set_registered_model_alias(name, PREVIOUS, champion)
            client.set_registered_model_alias(name, CHAMPION, version)
            for former in (CANARY, CANDIDATE):  # the aliases stay truthful: it is neither any more
                if alias(client, name, former) == version:
                    client.delete_registered_model_alias(name, former)
        else:
            client.set_registered_model_alias(name, target, version)
    except Exception as exc:
        raise RegistryError(
            f"The registry refused to move {target} of {name}: {exc}.", hint="Check the tracking URI."
        ) from None


def retire_canary(client: Any, name: str, version: str) -> bool:
    """Drop ``@canary`` if it still names ``version`` (a canary rolled back, or cleared but not
    promoted: a restart must not bring it back); True when it was dropped."""
    if alias(client, name, CANARY) != version:
        return False
    try:
        client.delete_registered_model_alias(name, CANARY)
    except Exception as exc:
        raise RegistryError(
            f"The registry refused to remove @canary of {name}: {exc}.", hint="Check the tracking URI."
        ) from None
    return True


def alias(client: Any, name: str, alias_name: str) -> str | None:
    """The version ``alias_name`` points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias_name).version)
    except MlflowException:
        return None


def _version_digest(client: Any, name: str, version: str) -> str:
    digest = client.get_model_version(name, version).tags.get("conveyor.version_digest")
    if not digest:
        raise ConveyorError(
            f"{name} version {version} has no conveyor.version_digest tag.", hint="Was it registered by Conveyor?"
        )
    return digest


class ServingAliases:
    """A model's aliases as a service follows them: read where verification reads the registry (no
    MLflow import on the embedded store), moved only here. A serving core is given one per model it
    serves; its unit tests give it a dictionary instead."""

    def __init__(self, ws: Workspace, name: str) -> None:
        self.ws, self.name = ws, name

    def version(self, alias_name: str) -> str | None:
        """The version ``alias_name`` points at now, or None."""
        try:
            return self.ws.registry().resolve(f"{self.name}@{alias_name}")[1]
        except NotFound:
            return None

    def digest(self, version: str) -> str | None:
        """The version's content digest as the registry records it (for a version not loaded here)."""
        return self.ws.registry().tags(self.name, version).get("conveyor.version_digest")

    def promote_canary(self, version: str) -> tuple[bool, list[str]]:
        """Promote a canary whose live analysis passed, through the promotion policy: (promoted, reasons)."""
        try:
            outcome = promote(self.ws, f"{self.name}/{version}", CHAMPION, canary_passed=True)
        except Exception as exc:
            return False, [f"promotion failed: {exc}"]
        return outcome.decision.ok, list(outcome.decision.reasons)

    def retire_canary(self, version: str) -> bool:
        """Drop ``@canary`` if it still names ``version``; True when it was dropped."""
        return retire_canary(self.ws.mlflow(), self.name, version)
