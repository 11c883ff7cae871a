"""The audit links that matter for an LLM release, beside the ones every version gets.

``verify_version`` has checked the files (weights included), signature, provenance, tags and the
ledger's signing and registration. For a release the auditor then asks:

- ``weights``: the store's file is the one a ``weights.resolved`` event recorded from a package,
  the manifest names the same digest and package, and the package installed here still lists
  that file with that digest in its RECORD (or is not installed: said so);
- ``prompt``: the release's template is the one a ``prompt.registered`` event recorded, and the
  prompt registry's version still holds exactly that text (an edited registry entry fails);
- ``eval-sets``: each evaluation set was versioned and validated, and its file still hashes to the
  recorded digest;
- ``evaluation``: a ``release.evaluated`` event judged exactly this release on those sets, passed,
  and its report file is intact;
- ``build`` and ``materials``: the release was built from those weights and prompt, in the MLflow
  run the registry names, and the provenance statement's materials are the ledger's digests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.registry.digests import bytes_digest, file_digest
from conveyor.registry.events import EventKind, inputs_by_role
from conveyor.registry.verify import Link, VerificationReport, in_project, materials_link

if TYPE_CHECKING:
    from conveyor.registry.audit import Facts
    from conveyor.registry.ledger import LedgerEvent

__all__ = ["KIND", "LIVE_LINKS", "is_llm_release", "llm_links", "llm_record_links"]

# The links that read this machine (the installed package, the prompt registry, the set files): an
# evidence bundle reports them as they were at export.
LIVE_LINKS = ("weights", "prompt", "eval-sets")

KIND = "llm-release"


def is_llm_release(tags: dict[str, str]) -> bool:
    return tags.get("conveyor.kind") == KIND


def llm_links(v: VerificationReport, facts: Facts, model_dir: Path | None, root: Path) -> list[Link]:
    manifest = _manifest(model_dir)
    return [
        _weights(v, facts, manifest),
        _prompt(v, facts, model_dir, manifest),
        _sets(facts, root),
        _evaluation(v, facts),
        _build(v, facts),
        _materials(v, facts),
    ]


def llm_record_links(v: VerificationReport, facts: Facts) -> list[Link]:
    """The links checked from the ledger's record and the verified files alone (as in an evidence bundle)."""
    return [_evaluation(v, facts), _build(v, facts), _materials(v, facts)]


def _manifest(model_dir: Path | None) -> dict[str, Any] | None:
    try:
        return json.loads((model_dir / "release.json").read_text()) if model_dir else None
    except (OSError, ValueError):
        return None


def _weights(v: VerificationReport, facts: Facts, manifest: dict[str, Any] | None) -> Link:
    digest, event = facts.made("conveyor.weights_digest", EventKind.WEIGHTS_RESOLVED)
    if event is None:
        return Link("weights", False, f"no weights.resolved event records the weights {digest}")
    record = (manifest or {}).get("weights", {})
    if record.get("digest") != digest or record.get("purl") != event.details.get("purl"):
        return Link(
            "weights",
            False,
            f"the release names {record.get('purl')} {record.get('digest')}, the ledger {event.details.get('purl')} {digest}",
        )
    package, version = str(event.details.get("package")), str(event.details.get("version"))
    ok, said = _installed(package, digest or "")
    if not ok:
        return Link("weights", False, f"{said} (recorded: {package} {version}, event #{event.seq})")
    return Link("weights", True, f"{event.details.get('purl')} ({digest}, event #{event.seq}); {said}")


def _installed(package: str, digest: str) -> tuple[bool, str]:
    """Whether the package installed here still lists a file with ``digest`` in its RECORD."""
    import base64
    from importlib import metadata

    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return True, f"{package} is not installed here: the store's copy was checked by the signature"
    want = digest.removeprefix("sha256:")
    for entry in dist.files or []:
        if entry.suffix == ".gguf" and entry.hash is not None and entry.hash.mode == "sha256":
            found = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
            if found == want:
                actual = file_digest(Path(str(dist.locate_file(entry))))
                if actual != digest:
                    return False, f"the installed {package} file {entry} hashes to {actual}: the package was altered"
                return True, f"installed {package} {dist.version} lists and holds these bytes ({entry})"
    return (
        True,
        f"the installed {package} {dist.version} ships other weights (several parts, or another build): the store's copy was checked by the signature",
    )


def _prompt(v: VerificationReport, facts: Facts, model_dir: Path | None, manifest: dict[str, Any] | None) -> Link:
    digest, event = facts.made("conveyor.prompt_digest", EventKind.PROMPT_REGISTERED)
    if event is None:
        return Link("prompt", False, f"no prompt.registered event records the prompt {digest}")
    template = inputs_by_role(event).get("template")
    prompt = (manifest or {}).get("prompt", {})
    if model_dir is None or not prompt.get("file"):
        return Link("prompt", False, "the release's template could not be read")
    ours = file_digest(model_dir / prompt["file"])
    if ours != template:
        return Link("prompt", False, f"the release's template hashes to {ours}, the registered one to {template}")
    uri = str(event.details.get("uri"))
    try:
        import mlflow

        # From the store, never through the client's prompt cache: an audit reads what is there now.
        found = mlflow.MlflowClient().get_prompt_version(
            str(event.details.get("name")), str(event.details.get("version"))
        )
        registered = found.template if found is not None else None
    except Exception as exc:  # MlflowException, a store error
        return Link("prompt", False, f"the prompt registry could not be read for {uri} ({type(exc).__name__})")
    if not isinstance(registered, str):
        return Link("prompt", False, f"the prompt registry has no {uri}")

    held = bytes_digest(registered.encode())
    if held != template:
        return Link("prompt", False, f"the registry's {uri} now holds other text ({held}, recorded {template})")
    return Link("prompt", True, f"{uri} holds exactly the release's template ({template}, event #{event.seq})")


def _sets(facts: Facts, root: Path) -> Link:
    digest, event = facts.made("conveyor.validation_digest", EventKind.DATA_VALIDATED)
    if event is None:
        return Link("eval-sets", False, f"no data.validated event records the evaluation sets {digest}")
    if event.details.get("success") is not True:
        return Link("eval-sets", False, f"event #{event.seq} records a failed validation")
    sets = {role.split(":", 1)[1]: d for role, d in inputs_by_role(event).items() if role.startswith("set:")}
    wrong, checked = [], []
    for name, recorded in sets.items():
        versioned = [e for e in facts.by_output.get(recorded, []) if e.kind == EventKind.DATASET_VERSIONED]
        if not versioned:
            wrong.append(f"{name}: no dataset.versioned event for {recorded}")
            continue
        path = in_project(root, versioned[-1].details.get("path", ""))
        if not path.is_file():
            wrong.append(f"{name}: {path} is gone")
        elif (found := file_digest(path)) != recorded:
            wrong.append(f"{name}: {path} hashes to {found}, not the recorded {recorded}: the set was changed")
        else:
            checked.append(str(versioned[-1].details.get("path")))
    if wrong or not sets:
        return Link("eval-sets", False, "; ".join(wrong) or "the validation names no sets")
    return Link("eval-sets", True, f"{', '.join(checked)} validated (event #{event.seq}) and unchanged")


def _evaluation(v: VerificationReport, facts: Facts) -> Link:
    digest, event = facts.made("conveyor.evaluation_digest", EventKind.RELEASE_EVALUATED)
    if event is None:
        return Link("evaluation", False, f"no release.evaluated event produced the results {digest}")
    if inputs_by_role(event).get("release") != v.model_digest:
        return Link("evaluation", False, f"event #{event.seq} evaluated another release, not {v.model_digest}")
    if inputs_by_role(event).get("validation") != facts.tags.get("conveyor.validation_digest"):
        return Link("evaluation", False, f"event #{event.seq} evaluated on other sets")
    if event.details.get("passed") is not True:
        return Link("evaluation", False, f"event #{event.seq} records a failed gate: {event.details.get('reasons')}")
    metrics = event.details.get("metrics", {})
    return Link(
        "evaluation",
        True,
        f"passed the gate on {event.details.get('cases')} cases (pass rate {metrics.get('pass_rate', 0):.2f}, "
        f"refusal rate {metrics.get('refusal_rate', 0):.2f}; event #{event.seq})",
    )


def _build(v: VerificationReport, facts: Facts) -> Link:
    found: list[LedgerEvent] = [
        e for e in facts.by_output.get(v.model_digest or "", []) if e.kind == EventKind.RELEASE_BUILT
    ]
    if not found:
        return Link("build", False, f"no release.built event produced the release {v.model_digest}")
    event = found[-1]
    roles = inputs_by_role(event)
    wrong = [
        f"{role} is {roles.get(role)}, the registry says {facts.tags.get(tag)}"
        for role, tag in (("weights", "conveyor.weights_digest"), ("prompt", "conveyor.prompt_digest"))
        if roles.get(role) != facts.tags.get(tag)
    ]
    if event.details.get("run_id") != facts.tags.get("conveyor.run_id"):
        wrong.append(f"MLflow run {event.details.get('run_id')}, the registry {facts.tags.get('conveyor.run_id')}")
    if wrong:
        return Link("build", False, f"event #{event.seq}: " + "; ".join(wrong))
    return Link(
        "build",
        True,
        f"built from these weights and prompt in MLflow run {event.details.get('run_id')} (event #{event.seq})",
    )


def _materials(v: VerificationReport, facts: Facts) -> Link:
    if v.statement is None:
        return Link("materials", False, "no verified provenance statement to compare")
    materials = {
        d.get("uri", ""): "sha256:" + d.get("digest", {}).get("sha256", "")
        for d in v.statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    }
    _, weights = facts.made("conveyor.weights_digest", EventKind.WEIGHTS_RESOLVED)
    _, prompt = facts.made("conveyor.prompt_digest", EventKind.PROMPT_REGISTERED)
    expected = {
        (weights.details.get("purl") if weights else "weights"): facts.tags.get("conveyor.weights_digest"),
        (prompt.details.get("uri") if prompt else "prompt"): facts.tags.get("conveyor.prompt_digest"),
        "evaluation-results": facts.tags.get("conveyor.evaluation_digest"),
        "evaluation-sets-validation": facts.tags.get("conveyor.validation_digest"),
    }
    return materials_link(expected, materials, "weights, prompt, evaluation sets and results")
