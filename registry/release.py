"""Release: verify a version, judge it by the promotion policy, move an alias, record it; roll back.

Promotions of one model are serialised by a lock file in Conveyor's home, so two at once leave
one consistent alias state and one ledger entry each. ``previous-champion`` always points at the
champion a promotion replaced, which is what ``rollback`` restores.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from policies.errors import ConveyorError, NotFound, RegistryError
from policies.loading import load_policy
from policies.project import ProjectConfig
from policies.promotion import Candidate, Decision, PromotionPolicy, decide_promotion
from policies.signing import SigningPolicy, load_signing_policy
from registry.digests import file_digest, json_digest
from registry.ledger import Ledger
from registry.locks import file_lock
from registry.verify import VerificationReport, verify_version

__all__ = ["ChampionScorer", "PromotionOutcome", "ReleaseContext", "alias", "promote", "rollback"]

CHAMPION, PREVIOUS, CANARY = "champion", "previous-champion", "canary"


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
        return {"ok": self.decision.ok, "name": self.name, "version": self.version, "target": self.target,
                "dry_run": self.dry_run, "previous": self.previous, "reasons": self.decision.reasons,
                "ledger_event": self.event, "verification": self.verification.to_dict()}  # fmt: skip


# Scores champion version ``champion`` on the holdout of the candidate ``report`` describes
# (None when that holdout cannot be found intact); the pipelines provide one.
ChampionScorer = Callable[["ReleaseContext", VerificationReport, str], "dict[str, float] | None"]


@dataclass(frozen=True)
class ReleaseContext:
    """Where the release reads its policies and keeps its state."""

    root: Path
    home: Path
    project: ProjectConfig
    ledger: Ledger
    policies: Path  # the folder holding promotion.yaml
    score_champion: ChampionScorer | None = None  # used when training did not record the comparison

    def signing(self) -> SigningPolicy:
        return load_signing_policy(self.root)


def promote(ctx: ReleaseContext, ref: str, target: str, *, dry_run: bool = False) -> PromotionOutcome:
    """Verify ``ref``, decide by the promotion policy, and (unless ``dry_run``) move ``target`` to it."""
    from mlflow import MlflowClient

    policy_file = ctx.policies / "promotion.yaml"
    policy = load_policy(policy_file, PromotionPolicy)
    client = MlflowClient()
    with file_lock(ctx.home, "release-" + ref.split("@")[0].split("/")[0]):
        report = verify_version(ref, ctx.signing(), root=ctx.root, keys_dir=ctx.home / "keys", ledger=ctx.ledger)
        name, version = report.name, report.version
        if version is None:  # a usage mistake, not a refusal
            raise RegistryError(report.links[0].detail, hint="Check the model name, version or alias.")
        champion = alias(client, name, CHAMPION)
        if target not in policy.targets:
            decision = Decision(False, [f"the promotion policy does not allow promotion to {target}"])
        elif not report.ok:
            failed = report.first_failure
            decision = Decision(False, [f"verification failed at the {failed.name} link: {failed.detail}"])
        else:
            decision = decide_promotion(_candidate(ctx, client, report, champion), champion, policy)
        previous = alias(client, name, target) if version else None
        if dry_run:
            return PromotionOutcome(name, version, target, decision, dry_run, previous, None, report)
        if decision.ok:
            _move(client, name, version, target, champion)
        event = ctx.ledger.append(
            "model.promoted" if decision.ok else "model.promotion_refused",
            inputs=[d for d in (report.version_digest, file_digest(policy_file)) if d],
            outputs=[json_digest({"decision": asdict(decision), "target": target, "version": version})],
            details={"name": name, "version": version, "target": target, "ok": decision.ok,
                     "reasons": decision.reasons, "previous": previous, "champion_before": champion,
                     "policy": str(policy_file)},
        )  # fmt: skip
    return PromotionOutcome(name, version, target, decision, False, previous, event.seq, report)


def rollback(ctx: ReleaseContext, name: str) -> tuple[str, str]:
    """Point ``champion`` back at ``previous-champion``; returns (from version, to version)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    with file_lock(ctx.home, f"release-{name}"):
        current, previous = alias(client, name, CHAMPION), alias(client, name, PREVIOUS)
        if previous is None:
            raise NotFound(f"{name} has no previous champion to roll back to.", hint="Promote a version with `conveyor promote` first.")
        try:
            client.set_registered_model_alias(name, CHAMPION, previous)
            client.delete_registered_model_alias(name, PREVIOUS)
        except Exception as exc:
            raise RegistryError(f"The registry refused the rollback of {name}: {exc}.", hint="Check the tracking URI.") from None
        digests = [_version_digest(client, name, v) for v in (current, previous) if v]
        # Both versions are inputs: a rollback uses them, it does not make either.
        ctx.ledger.append("model.rolled_back", inputs=digests, outputs=[],
                          details={"name": name, "from": current, "to": previous})  # fmt: skip
    return str(current), previous


# -- facts for the decision --------------------------------------------------------------------


def _candidate(ctx: ReleaseContext, client: Any, report: VerificationReport, champion: str | None) -> Candidate:
    run = client.get_run(report.tags["conveyor.run_id"])
    metrics = {k.removeprefix("holdout_"): v for k, v in run.data.metrics.items() if k.startswith("holdout_")}
    return Candidate(
        name=report.name, version=str(report.version), signature_verified=report.ok,
        validation_passed=_validation_passed(ctx.ledger, report.tags.get("conveyor.validation_digest")),
        clean_tree=_clean_tree(report.statement), size_bytes=report.size_bytes, metrics=metrics,
        champion_metrics=_champion_metrics(ctx, client, report, champion) if champion and champion != report.version else None,
    )  # fmt: skip


def _validation_passed(ledger: Ledger, digest: str | None) -> bool:
    events = [e for e in ledger.producers(digest) if e.kind == "data.validated"] if digest else []
    return bool(events) and events[-1].details.get("success") is True


def _clean_tree(statement: dict[str, Any] | None) -> bool | None:
    if statement is None:
        return None
    byproducts = {b["name"]: b.get("content", "") for b in statement["predicate"]["runDetails"].get("byproducts", [])}
    if "code_dirty" not in byproducts:
        return None
    dirty = json.loads(base64.b64decode(byproducts["code_dirty"]) or b"null")
    return None if dirty is None else not dirty


def _champion_metrics(ctx: ReleaseContext, client: Any, report: VerificationReport, champion: str) -> dict[str, float] | None:
    """The champion's metrics on the candidate's holdout: recorded at training when that champion
    was already champion, otherwise scored now by ``ctx.score_champion`` (if there is one)."""
    run = client.get_run(report.tags["conveyor.run_id"])
    if run.data.tags.get("conveyor.champion_version") == champion:
        return {k.removeprefix("champion_"): v for k, v in run.data.metrics.items() if k.startswith("champion_")}
    return None if ctx.score_champion is None else ctx.score_champion(ctx, report, champion)


# -- registry moves ------------------------------------------------------------------------------


def _move(client: Any, name: str, version: str, target: str, champion: str | None) -> None:
    try:
        if target == CHAMPION:
            if champion is not None and champion != version:
                client.set_registered_model_alias(name, PREVIOUS, champion)
            client.set_registered_model_alias(name, CHAMPION, version)
            if alias(client, name, CANARY) == version:
                client.delete_registered_model_alias(name, CANARY)
        else:
            client.set_registered_model_alias(name, target, version)
    except Exception as exc:
        raise RegistryError(f"The registry refused to move {target} of {name}: {exc}.", hint="Check the tracking URI.") from None


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
        raise ConveyorError(f"{name} version {version} has no conveyor.version_digest tag.", hint="Was it registered by Conveyor?")
    return digest
