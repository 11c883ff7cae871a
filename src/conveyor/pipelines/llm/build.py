"""Build: the release folder, everything a served release is, named by digest.

``release.json`` (the manifest: weights by digest and source, prompt registry version and digest,
generation parameters and limits, guardrail policy digest, fallback, prices, runtime), the
prompt template as registered, the guardrail policy, and the weights linked from the store. The
release's digest is the digest of its file list, weights included; its registered copy leaves the
weights out (``registered_copy``), so a prompt-only change is a release of a few kilobytes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from conveyor.pipelines.llm.knowledge import KnowledgeVersion, build_index
from conveyor.pipelines.llm.prompts import RegisteredPrompt
from conveyor.policies.guardrails import GuardrailPolicy
from conveyor.policies.llm import LlmProject
from conveyor.policies.loading import load_policy
from conveyor.registry.digests import file_digest, json_digest
from conveyor.registry.signing import model_digest, model_files
from conveyor.registry.weights import MANIFEST, WEIGHTS_DIR, ResolvedWeights, link_weights
from conveyor.serving.retrieval import INDEX_DIR, Passage

__all__ = ["FORMAT", "BuiltRelease", "KnowledgeIndex", "build_release", "registered_copy"]

FORMAT = "conveyor.llm-release/1"
PROMPT_FILE = "prompt/template.txt"
GUARDRAILS_FILE = "guardrails.yaml"


@dataclass(frozen=True)
class KnowledgeIndex:
    """A validated knowledge base version and the passages cut from it: what the index is built from."""

    version: KnowledgeVersion
    validation: str  # the validation record's digest
    passages: list[Passage]


@dataclass(frozen=True)
class BuiltRelease:
    folder: Path  # with the weights linked in
    manifest: dict[str, Any]
    files: dict[str, str]
    digest: str  # the release: digest of its file list (weights included)
    parameters_digest: str
    guardrails_digest: str


def build_release(
    project: LlmProject,
    weights: ResolvedWeights,
    prompt: RegisteredPrompt,
    folder: Path,
    *,
    store: Path,
    knowledge: KnowledgeIndex | None = None,
) -> BuiltRelease:
    """Write the release into ``folder`` (emptied first) and return what it is; with ``knowledge``,
    its passages' retrieval index is a folder of the release (signed with the rest)."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "prompt").mkdir(parents=True)
    (folder / PROMPT_FILE).write_text(prompt.template, encoding="utf-8")
    guardrails = project.path(project.guardrails)
    shutil.copyfile(guardrails, folder / GUARDRAILS_FILE)
    guardrails_digest = file_digest(guardrails)
    parameters = {"generation": project.generation.model_dump(mode="json"), "limits": project.limits.model_dump()}
    index: dict[str, Any] | None = None
    if knowledge is not None and project.knowledge is not None:
        files = build_index(knowledge.passages, folder)
        index = {
            "digest": knowledge.version.digest,
            "md5": knowledge.version.md5,
            "documents": len(knowledge.version.documents),
            "passages": len(knowledge.passages),
            "dir": INDEX_DIR,
            "index_digest": json_digest(files),
            "top_k": project.knowledge.top_k,
            "min_score": project.knowledge.min_score,
            "library": f"bm25s=={metadata.version('bm25s')}",
        }
    manifest = {
        "format": FORMAT,
        "name": project.name,
        "description": project.description,
        "weights": weights.record(),
        "prompt": {
            "name": prompt.name,
            "version": prompt.version,
            "uri": prompt.uri,
            "digest": prompt.digest,
            "template_digest": prompt.template_digest,
            "file": PROMPT_FILE,
            "variables": dict(project.prompt.variables),
        },
        **parameters,
        "guardrails": {"file": GUARDRAILS_FILE, "digest": guardrails_digest},
        "fallback": project.fallback,
        "knowledge": index,
        "pricing": project.pricing.model_dump(),
        "runtime": {
            "engine": "llama.cpp",
            "llama_cpp_python": metadata.version("llama-cpp-python"),
            "context": project.model.context,
            "threads": project.threads,
            "mode": project.model.mode,
            "chat_format": project.model.chat_format,
            "pii_model": _pii_model(guardrails),
        },
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    link_weights(folder, store)
    files = model_files(folder)
    return BuiltRelease(folder, manifest, files, model_digest(files), json_digest(parameters), guardrails_digest)


def _pii_model(policy: Path) -> str | None:
    """The package and version of the spaCy model the guardrail policy's Presidio rules load."""
    presidio = load_policy(policy, GuardrailPolicy).output.presidio
    if presidio is None:
        return None
    names = metadata.packages_distributions().get(presidio.model, [presidio.model])
    try:
        return f"{names[0]}=={metadata.version(names[0])}"
    except metadata.PackageNotFoundError:
        return presidio.model


def registered_copy(folder: Path, destination: Path) -> Path:
    """The release's files without its weights (what the registry stores), in ``destination``."""
    shutil.copytree(folder, destination, ignore=lambda d, _: [WEIGHTS_DIR] if Path(d) == folder else [])
    return destination
