"""The LLM loop's return path: feedback in, live traffic checked, and what a breach or a new
version of the documents starts.

- ``add_feedback`` joins rated answers to the inference log and writes the badly rated ones as
  candidate cases; ``accept_feedback`` adds the reviewed, accepted ones to the project's feedback
  set (recorded by digest): the evaluation set has grown.
- ``check_llm`` compares the champion's live traffic with its evaluation traffic
  (``monitoring.llm_traffic``) and records ``drift.checked``; a breach asks the same trigger as
  retraining (``monitoring.trigger.decide_trigger``: one per breach window, a cooldown) and
  starts ``reevaluate``: the champion evaluated on the grown sets; if it now fails its gate, the
  newest former champion that passes is restored (``model.rolled_back``, its cause the trigger),
  or, when none does, the champion is held and the alert says so.
- ``check_knowledge`` notices a knowledge base whose content is not the champion's (a new DVC
  version) and starts a rebuild: the release flow (index, evaluation, signature, registry), the
  cause an input of the build, then the promotion policy may make it the canary.

Each start is a ``retraining.triggered`` event whose inputs are its evidence (a report, a
feedback file, a knowledge version), so lineage leads from the outcome back to its cause.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conveyor.monitoring.feedback import accept_candidates, candidates_of, join_feedback, read_feedback
from conveyor.monitoring.llm_traffic import (
    LlmTrafficResult,
    compare_traffic,
    finish_llm_page,
    live_frame,
    reference_frame,
)
from conveyor.monitoring.trigger import Breach, TriggerDecision
from conveyor.pipelines import triggers
from conveyor.pipelines.datasets import relative_to_root, version_dataset
from conveyor.pipelines.evaluation_page import write_evaluation_page
from conveyor.pipelines.flows import run_as_configured
from conveyor.pipelines.llm.flow import evaluate_version, evaluation_sets, release_flow
from conveyor.pipelines.llm.knowledge import version_knowledge
from conveyor.pipelines.release import score_champion
from conveyor.pipelines.retraining import record_drift_checked
from conveyor.pipelines.triggers import TriggerOutcome
from conveyor.policies.drift import DriftPolicy, Retraining
from conveyor.policies.errors import ConveyorError, DataInvalid, NotFound, NothingToActOn, PolicyInvalid
from conveyor.policies.llm import LlmProject, read_eval_set
from conveyor.policies.promotion import Candidate, decide_promotion
from conveyor.registry.digests import canonical_json, file_digest, json_digest
from conveyor.registry.events import EventKind
from conveyor.registry.inference_log import read_log
from conveyor.registry.ledger import Ledger
from conveyor.registry.locks import file_lock
from conveyor.registry.release import promote, rollback
from conveyor.registry.workspace import Workspace

__all__ = [
    "AcceptOutcome",
    "FeedbackOutcome",
    "LlmCheckOutcome",
    "accept_feedback",
    "add_feedback",
    "candidates_path",
    "check_knowledge",
    "check_llm",
    "ingest_gateway_feedback",
    "rebuild",
    "reevaluate",
    "reevaluate_here",
]

log = logging.getLogger("conveyor.monitoring")


@dataclass
class LlmCheckOutcome:
    result: LlmTrafficResult
    decision: TriggerDecision | None = None
    trigger: str | None = None
    action: TriggerOutcome | None = None
    feedback: list[FeedbackOutcome] = field(default_factory=list)


@dataclass
class FeedbackOutcome:
    file: str
    digest: str
    rows: int
    matched: int
    negative: int
    candidates: int  # new candidate cases written
    candidates_file: str | None
    unmatched: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AcceptOutcome:
    file: str
    accepted: int
    rejected: int
    pending: int
    set: str
    set_digest: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- feedback --------------------------------------------------------------------------------------


def candidates_path(project: LlmProject) -> Path:
    """Where candidate cases wait for review: beside the feedback set, ``<name>.candidates.jsonl``."""
    accepted = _feedback_set(project)
    return accepted.with_name(accepted.stem + ".candidates.jsonl")


def _feedback_set(project: LlmProject) -> Path:
    if project.evaluation.feedback is None:
        raise PolicyInvalid(
            f"{project.source} names no set for cases accepted from feedback.",
            hint="Add `evaluation.feedback: llm/eval/feedback.jsonl` (any path) to the project config.",
        )
    return project.path(project.evaluation.feedback)


def add_feedback(ws: Workspace, path: Path, *, source: str = "file") -> FeedbackOutcome:
    """Record the feedback in ``path``, join it to the logged answers, write candidate cases."""
    import json

    project = ws.llm_project()
    rows = read_feedback(path)  # DataInvalid before anything is recorded
    candidates = candidates_path(project)
    with ws.ledger() as ledger, file_lock(ws.home, f"feedback-{project.name}"):
        ref = version_dataset(path.absolute(), ledger, root=ws.root, details={"labels_for": project.name})
        answers = read_log(ws.inference_dir(project.name))
        if "kind" in answers:
            answers = answers[answers["kind"] == "llm"]
        joined = join_feedback(rows, answers)
        matched = joined[joined["version"].notna()]
        existing: set[str] = set()
        if candidates.is_file():
            existing = {json.loads(line)["id"] for line in candidates.read_text().splitlines() if line.strip()}
        for accepted in _accepted_ids(project):
            existing.add(accepted)
        new = candidates_of(matched, existing)
        if new:
            candidates.parent.mkdir(parents=True, exist_ok=True)
            with candidates.open("a", encoding="utf-8") as handle:
                for case in new:
                    handle.write(json.dumps(case, sort_keys=True) + "\n")
        per_version = {
            str(v): {"ratings": len(g), "negative": int((g["rating"] == "down").sum())}
            for v, g in matched.groupby("version")
        }
        unmatched = [str(r) for r in joined.loc[joined["version"].isna(), "request_id"]][:20]
        ledger.append(
            EventKind.FEEDBACK_ADDED,
            inputs={"feedback": ref.digest},
            outputs=[file_digest(candidates)] if new else [],
            details={
                "model": project.name,
                "path": relative_to_root(ref.path, ws.root),
                "rows": len(rows),
                "matched": len(matched),
                "negative": int((matched["rating"] == "down").sum()),
                "per_version": per_version,
                "unmatched": unmatched,
                "candidates": relative_to_root(candidates, ws.root) if new else None,
                "source": source,
            },
        )
    return FeedbackOutcome(
        str(path),
        ref.digest,
        len(rows),
        len(matched),
        int((matched["rating"] == "down").sum()),
        len(new),
        str(candidates) if new else None,
        unmatched,
    )


def _accepted_ids(project: LlmProject) -> set[str]:
    accepted = _feedback_set(project)
    if not accepted.is_file() or not accepted.read_text(encoding="utf-8").strip():
        return set()
    return {c.id for c in read_eval_set(accepted)}


def ingest_gateway_feedback(ws: Workspace) -> list[FeedbackOutcome]:
    """Record the feedback the gateway's clients posted (``POST /v1/feedback``) since the last time."""
    project = ws.llm_project()
    incoming = ws.home / "feedback" / project.name / "incoming"
    done = incoming.parent / "recorded"
    outcomes = []
    for file in sorted(incoming.glob("*.jsonl")) if incoming.is_dir() else []:
        # The writer appends: take the file as it is now, under a name of its own.
        taken = done / f"{file.stem}-{datetime.now(UTC):%Y%m%dT%H%M%S%f}.jsonl"
        done.mkdir(parents=True, exist_ok=True)
        file.replace(taken)
        try:
            outcomes.append(add_feedback(ws, taken, source="gateway"))
        except DataInvalid as exc:
            log.warning("gateway feedback %s not recorded: %s", taken, exc.message)
    return outcomes


def accept_feedback(ws: Workspace, path: Path) -> AcceptOutcome:
    """Add the reviewed file's accepted cases to the project's feedback set; record both by digest."""
    project = ws.llm_project()
    accepted, rejected, pending = accept_candidates(path)
    target = _feedback_set(project)
    with ws.ledger() as ledger, file_lock(ws.home, f"feedback-{project.name}"):
        known = _accepted_ids(project)
        ids = [c.id for c in accepted]
        clash = sorted({i for i in ids if ids.count(i) > 1} | (set(ids) & known))
        fresh = [c for c in accepted if c.id not in known]
        if clash and len(fresh) != len(accepted):
            log.info("already accepted, skipped: %s", ", ".join(clash))
        if not fresh:
            return AcceptOutcome(str(path), 0, rejected, pending, str(target), None)
        reviewed = version_dataset(path.absolute(), ledger, root=ws.root, details={"labels_for": project.name})
        target.parent.mkdir(parents=True, exist_ok=True)
        before = target.read_text(encoding="utf-8") if target.is_file() else ""
        lines = [c.model_dump_json(exclude_defaults=True) for c in fresh]
        partial = target.with_name(f".{target.name}.partial")
        partial.write_text(before + ("" if not before or before.endswith("\n") else "\n") + "\n".join(lines) + "\n")
        read_eval_set(partial)  # the grown set must still be a valid set before it replaces the old one
        partial.replace(target)
        grown = version_dataset(target, ledger, root=ws.root, details={"labels_for": project.name})
        ledger.append(
            EventKind.FEEDBACK_ACCEPTED,
            inputs={"candidates": reviewed.digest, "reviewed": None},
            outputs=[grown.digest],
            details={
                "model": project.name,
                "path": relative_to_root(reviewed.path, ws.root),
                "cases": len(fresh),
                "set": relative_to_root(target, ws.root),
            },
        )
    return AcceptOutcome(str(path), len(fresh), rejected, pending, str(target), grown.digest)


# -- the traffic check -----------------------------------------------------------------------------


def _champion_reference(ws: Workspace, ledger: Ledger, name: str, version: str) -> tuple[dict[str, Any], str]:
    import json

    tags = ws.mlflow().get_model_version(name, version).tags
    digest = tags.get("conveyor.evaluation_digest")
    events = [e for e in ledger.producers(digest) if e.kind == EventKind.RELEASE_EVALUATED] if digest else []
    report = Path(events[0].details["report"]) if events else None
    if report is None or not report.is_file() or file_digest(report) != digest:
        raise NotFound(
            f"The evaluation report of {name} version {version} ({digest}) is not on this machine or has changed.",
            hint="Live traffic is compared with the release's own evaluation; rebuild the release here.",
        )
    return json.loads(report.read_text()), str(digest)


def _llm_policy(ws: Workspace) -> tuple[DriftPolicy, Any]:
    policy = ws.drift_policy()
    return policy.model_copy(
        update={"retraining": Retraining(cooldown_minutes=policy.llm.cooldown_minutes)}
    ), policy.llm


def check_llm(ws: Workspace, window: str | None = None, *, start: bool = True) -> LlmCheckOutcome:
    """The champion's live traffic against its evaluation, gateway feedback recorded first; on a
    breach the trigger, and (``start``) the re-evaluation."""
    ws.bind_mlflow()
    project = ws.llm_project()
    name = project.name
    trigger_policy, policy = _llm_policy(ws)
    champion = ws.champion(name)
    if champion is None:
        raise NothingToActOn(
            f"{name} has no champion whose traffic could be checked.",
            hint=f"Promote one first: `conveyor promote {name}/<version> --to champion`.",
        )
    feedback = ingest_gateway_feedback(ws)
    spec = triggers.window_of(window or policy.window)
    now = datetime.now(UTC)
    since = now - timedelta(seconds=spec.seconds) if spec.seconds else None
    with ws.ledger() as ledger:
        report, reference_digest = _champion_reference(ws, ledger, name, champion)
        rows = read_log(ws.inference_dir(name), since=since)
        if not rows.empty:
            rows = rows[
                (rows["kind"] == "llm" if "kind" in rows else False)
                & (rows["version"].astype(str) == champion)
                & (rows["served_by"] == "champion")
                & (rows["status"] != "failed")
            ]
        if spec.rows:
            rows = rows.tail(spec.rows)
        min_score = _min_score(ws, name, champion)
        reference = reference_frame(report, min_score)
        current = live_frame(rows, min_score)
        ratings, negative = _feedback_counts(ledger, name, champion, since)
        label = f"llm-{name}-{now:%Y%m%dT%H%M%S%f}"
        out = ws.reports / "drift"
        result = LlmTrafficResult(
            "insufficient",
            name,
            champion,
            spec.describe(),
            len(current),
            len(reference),
            since=str(rows["time"].min()) if len(rows) else None,
            until=str(rows["time"].max()) if len(rows) else None,
        )
        window_digest = json_digest(sorted(rows["request_id"].astype(str))) if len(rows) else None
        enough = len(current) >= policy.min_rows
        if enough or ratings >= policy.feedback.min_ratings:
            columns, share, rates, verdict, html, snapshot = compare_traffic(
                reference,
                current if len(current) else reference.iloc[:0],
                policy,
                out,
                label,
                feedback=(ratings, negative),
            )
            result.feedback, result.html, result.snapshot = verdict, html, snapshot
            if enough:
                result.columns, result.share, result.rates = columns, share, rates
            reasons = []
            if enough and share >= policy.drift.share:
                drifted = ", ".join(c.column for c in columns if c.drifted)
                reasons.append(f"{share:.0%} of the descriptors drifted ({drifted})")
            breached = [r for r in result.rates if r.breached]
            reasons += [
                f"{r.name} rate {r.live:.0%} live vs {r.reference:.0%} in evaluation (p={r.p_value:.2g})"
                for r in breached
            ]
            if verdict["breached"]:
                reasons.append(
                    f"{negative} of {ratings} rated answers rated down ({verdict['negative_share']:.0%}, "
                    f"more than {policy.feedback.max_negative_share:.0%})"
                )
            result.reasons = reasons
            # A rate or feedback breach says what went wrong, descriptor drift only that traffic moved:
            # with both, the verdict is quality (the reasons name the drift too).
            drift_breach = enough and share >= policy.drift.share
            quality_breach = any(r.breached for r in result.rates) or bool(verdict["breached"])
            result.status = "quality" if quality_breach else ("drift" if drift_breach else "ok")
            if not enough and result.status == "ok":
                result.status = "insufficient"
                result.reasons = [f"{len(current)} answers in the window, fewer than {policy.min_rows}"]
        else:
            result.reasons = [
                f"{len(current)} answers in the window (fewer than {policy.min_rows}) and {ratings} ratings "
                f"(fewer than {policy.feedback.min_ratings}): no verdict"
            ]
        out.mkdir(parents=True, exist_ok=True)
        result.html = result.html or out / f"{label}.html"  # without a comparison, the verdict alone
        kept = out / f"{label}.json"
        kept.write_bytes(canonical_json({k: v for k, v in result.to_dict().items() if k != "report_digest"}))
        result.report, result.report_digest = kept, file_digest(kept)
        outcome = LlmCheckOutcome(result, feedback=feedback)
        breach = None
        if result.status in ("drift", "quality"):
            breach = Breach(
                result.status,
                name,
                champion,
                triggers.moment(result.since, now),
                triggers.moment(result.until, now),
                result.report_digest,
                result.describe(),
            )
            past = triggers.past_triggers(ledger, name, ("drift", "quality"))
            decision = triggers.decide(breach, past, trigger_policy, now, start=start, flag="act (--no-action)")
            outcome.decision = decision
            result.trigger = ("started: " if decision.start else "not started: ") + decision.reason
        finish_llm_page(result, ws.reports, policy.min_rows)
        record_drift_checked(
            ledger,
            result,
            {
                "version": triggers.version_digest(ws, name, champion),
                "reference": reference_digest,
                "window": window_digest,
            },
            [result.report_digest, _digest(result.html), _digest(result.snapshot)],
        )
        _record_quality(ledger, result, triggers.version_digest(ws, name, champion), policy.feedback.max_negative_share)
        if breach is not None and outcome.decision is not None and outcome.decision.start:
            outcome.trigger = triggers.record_trigger(ws, ledger, breach, outcome.decision).outputs[0]
    if outcome.trigger is not None:
        outcome.action = reevaluate(ws, outcome.trigger)
    return outcome


def _record_quality(ledger: Ledger, result: Any, version: str | None, max_negative: float) -> None:
    """The LLM check's quality verdict as the ``quality.checked`` record it is (feedback and answer
    rates): what status, the quality alert and the metrics read for every model alike."""
    status = {"quality": "breach", "insufficient": "not_enough_data"}.get(result.status, "ok")
    feedback = result.feedback or {}
    ledger.append(
        EventKind.QUALITY_CHECKED,
        inputs={"joined": result.report_digest, "version": version},
        details={
            "model": result.model,
            "status": status,
            "metric": "negative_feedback_share",
            "bound": f"<= {max_negative:g} (and the answer rates of policies/drift.yaml `llm`)",
            "version": result.version,
            "value": feedback.get("negative_share"),
            "labelled": int(feedback.get("ratings") or 0),
            "reason": "; ".join(result.reasons) or None,
        },
    )


def _min_score(ws: Workspace, name: str, version: str) -> float | None:
    """The release's own out-of-knowledge threshold (its manifest's, tagged at registration), or None
    without a knowledge base; a release registered before the tag existed falls back to the project's."""
    tags = ws.mlflow().get_model_version(name, version).tags
    if not tags.get("conveyor.knowledge_digest"):
        return None
    if "conveyor.knowledge_min_score" in tags:
        return float(tags["conveyor.knowledge_min_score"])
    project = ws.llm_project()
    return project.knowledge.min_score if project.knowledge is not None else None


def _feedback_counts(ledger: Ledger, name: str, version: str, since: datetime | None) -> tuple[int, int]:
    ratings = negative = 0
    for event in ledger.latest([EventKind.FEEDBACK_ADDED], limit=1_000, model=name):
        if since is not None and datetime.fromisoformat(event.time) < since:
            continue
        counts = event.details.get("per_version", {}).get(version)
        if counts:
            ratings += int(counts["ratings"])
            negative += int(counts["negative"])
    return ratings, negative


# -- the trigger and the re-evaluation -------------------------------------------------------------


def reevaluate(ws: Workspace, trigger: str) -> TriggerOutcome:
    """The champion on the grown evaluation sets; if it fails its gate, the newest former champion
    that passes is restored, else the champion is held and an alert logged."""
    return run_as_configured(
        ws, lambda: reevaluate_here(ws, trigger), flow="llm_reevaluation", parameters={"trigger": trigger}
    )


def reevaluate_here(ws: Workspace, trigger: str) -> TriggerOutcome:
    """``reevaluate`` in this process (what its Prefect flow runs)."""
    ws.bind_mlflow()
    project = ws.llm_project()
    name = project.name
    gate = ws.policy("promotion").value.llm
    with ws.ledger() as ledger:
        already = triggers.claim(ws, ledger, trigger, name)
        if already:
            return TriggerOutcome("skipped", trigger, already)
        champion = ws.champion(name)
        try:
            if champion is None or gate is None:
                raise NotFound(f"{name} has no champion, or the promotion policy no `llm` section.", hint="")
            sets = _current_sets(ws, ledger, project)
            passed, reasons = _judge(ws, ledger, project, gate, name, champion, sets, trigger)
            if passed:
                return _completed(
                    ledger,
                    TriggerOutcome(
                        "completed", trigger, f"version {champion} still passes its gate on the grown sets", champion
                    ),
                )
            for former in _former_champions(ledger, name, champion):
                ok, _ = _judge(ws, ledger, project, gate, name, former, sets, trigger)
                if ok:
                    rollback(ws, name, to=former, cause=trigger)
                    reason = f"version {champion} failed its gate ({'; '.join(reasons)}); rolled back to version {former}, which passes"
                    log.warning("%s: %s", name, reason)
                    return _completed(ledger, TriggerOutcome("rolled_back", trigger, reason, former, reasons=reasons))
            reason = (
                f"ALERT: version {champion} failed its gate on the grown sets ({'; '.join(reasons)}) and no former "
                "champion passes: held as champion; fix the release or its sets, then rebuild"
            )
            log.error("%s: %s", name, reason)
            return _completed(ledger, TriggerOutcome("held", trigger, reason, champion, reasons=reasons))
        except ConveyorError as exc:
            return triggers.failed(ledger, trigger, exc)


def _completed(ledger: Ledger, outcome: TriggerOutcome) -> TriggerOutcome:
    """A re-evaluation's end: it made no version, and what it did is its record's data."""
    return triggers.completed(ledger, outcome, None, reasons=[outcome.reason, *outcome.reasons], data=outcome.status)


def _current_sets(ws: Workspace, ledger: Ledger, project: LlmProject) -> dict[str, Any]:

    sets = {}
    for path in evaluation_sets(project):
        cases = read_eval_set(path)
        sets[path.stem] = (cases, version_dataset(path, ledger, root=ws.root).digest)
    return sets


def _judge(
    ws: Workspace,
    ledger: Ledger,
    project: LlmProject,
    gate: Any,
    name: str,
    version: str,
    sets: dict[str, Any],
    cause: str,
) -> tuple[bool, list[str]]:
    """Evaluate ``version`` on ``sets`` and ask the gate's thresholds; recorded as ``release.evaluated``."""
    result = evaluate_version(
        ws,
        ledger,
        name,
        version,
        {n: c for n, (c, _) in sets.items()},
        gate.scorers,
        project.evaluation.timeout_seconds,
    )
    candidate = Candidate(
        name=name,
        version=version,
        signature_verified=True,
        validation_passed=True,
        clean_tree=None,
        size_bytes=0,
        metrics=result.metrics,
    )
    decision = decide_promotion(candidate, None, gate.model_copy(update={"beat_champion": None}).as_policy(("canary",)))
    report = ws.reports / "llm" / f"{name}-{version}-reevaluation-{datetime.now(UTC):%Y%m%dT%H%M%S%f}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    body = {**result.to_dict(), "decision": {"ok": decision.ok, "reasons": decision.reasons}}
    report.write_bytes(canonical_json(body))
    write_evaluation_page(
        ws.reports,
        model=name,
        version=version,
        run_id=result.run_id or "",
        report=body,
        llm=True,
        gate=(decision.ok, decision.reasons),
        path=ws.reports / "evaluation" / report.with_suffix(".html").name,
        reevaluation=f"trigger {cause.removeprefix('sha256:')[:12]}",
    )
    ledger.append(
        EventKind.RELEASE_EVALUATED,
        inputs={
            "release": triggers.version_digest(ws, name, version),
            "policy": ws.policy("promotion").digest,
            "cause": cause,
            **{f"set:{n}": d for n, (_, d) in sets.items()},
        },
        outputs=[file_digest(report)],
        details={
            "name": name,
            "version": version,
            "cause": cause,
            "passed": decision.ok,
            "metrics": result.metrics,
            "cases": len(result.cases),
            "failed": [f"{c.set}/{c.id}" for c in result.failed],
            "reasons": decision.reasons,
            "report": str(report),
            "seconds": round(result.seconds, 2),
        },
    )
    failed_cases = [f"{c.set}/{c.id}" for c in result.failed if c.set == "feedback"]
    reasons = [*decision.reasons, *([f"failed feedback cases: {', '.join(failed_cases)}"] if failed_cases else [])]
    return decision.ok, reasons


def _former_champions(ledger: Ledger, name: str, current: str) -> list[str]:
    """Versions that were champion before ``current``, newest first."""
    seen: list[str] = []
    for event in ledger.latest([EventKind.MODEL_PROMOTED, EventKind.MODEL_ROLLED_BACK], limit=1_000, model=name):
        details = event.details
        version = details.get("version") if event.kind == EventKind.MODEL_PROMOTED else details.get("to")
        if event.kind == EventKind.MODEL_PROMOTED and details.get("target") != "champion":
            continue
        if version and version != current and version not in seen:
            seen.append(str(version))
    return seen


# -- the knowledge base ----------------------------------------------------------------------------


def check_knowledge(ws: Workspace, *, start: bool = True) -> tuple[str, TriggerOutcome | None]:
    """Whether the knowledge base's content is the champion's; if not, the rebuild (once per version,
    after the cooldown). Returns what was found and what was done."""
    ws.bind_mlflow()
    project = ws.llm_project()
    name = project.name
    if project.knowledge is None:
        raise PolicyInvalid(f"{project.source} has no knowledge base.", hint="Add a `knowledge` section.")
    champion = ws.champion(name)
    trigger_policy, _ = _llm_policy(ws)
    now = datetime.now(UTC)
    with ws.ledger() as ledger:
        version = version_knowledge(project.path(project.knowledge.documents), project.knowledge, ledger, root=ws.root)
        served = (
            ws.mlflow().get_model_version(name, champion).tags.get("conveyor.knowledge_digest") if champion else None
        )
        if champion is None or served == version.digest:
            return (
                f"the champion answers from this knowledge version ({version.md5})" if champion else "no champion yet"
            ), None
        for past in ledger.latest([EventKind.RETRAINING_TRIGGERED], limit=500, model=name):
            if past.details.get("evidence") == version.digest:
                return f"a rebuild for knowledge version {version.md5} was already started (event #{past.seq})", None
        breach = Breach(
            "knowledge",
            name,
            champion,
            now,
            now,
            version.digest,
            f"the knowledge base changed: DVC version {version.md5}, {len(version.documents)} documents",
        )
        earlier = triggers.past_triggers(ledger, name, ("knowledge",))
        decision = triggers.decide(breach, earlier, trigger_policy, now, start=True, flag="act (--no-action)")
        if not decision.start:
            return "not started: " + decision.reason, None
        if not start:
            return "a rebuild would start (--no-action)", None
        trigger = triggers.record_trigger(ws, ledger, breach, decision).outputs[0]
    return f"knowledge version {version.md5} differs from the champion's", rebuild(ws, trigger)


def rebuild(ws: Workspace, trigger: str) -> TriggerOutcome:
    """The release flow for ``trigger`` (its cause recorded), then the promotion policy may make it the canary."""
    project = ws.llm_project()
    with ws.ledger() as ledger:
        already = triggers.claim(ws, ledger, trigger, project.name)
    if already:
        return TriggerOutcome("skipped", trigger, already)
    try:
        built = release_flow(ws, cause=trigger)
    except ConveyorError as exc:
        with ws.ledger() as ledger:
            return triggers.failed(ledger, trigger, exc)
    promotion = promote(ws, f"{built.name}/{built.version}", "canary", score_champion=score_champion)
    outcome = TriggerOutcome(
        "completed",
        trigger,
        f"version {built.version} built and "
        + ("made the canary" if promotion.decision.ok else "registered, but the promotion policy refused it as canary"),
        built.version,
        promotion.decision.ok,
        list(promotion.decision.reasons),
    )
    with ws.ledger() as ledger:
        return triggers.completed(ledger, outcome, built.version_digest, reasons=outcome.reasons, data="knowledge")


# -- helpers ---------------------------------------------------------------------------------------


def _digest(path: Path | None) -> str | None:
    return file_digest(path) if path is not None and path.is_file() else None
