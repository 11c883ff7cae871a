"""An LLM release as the gateway serves it: verified into a private folder, read, and run.

``load_release`` verifies a registered release (every link of ``conveyor verify``, the weights'
digest among them) into a folder of its own and reads what serving needs from that copy: the
manifest, the signed prompt, the guardrail policy, the retrieval index and the tokenizer.
``ReleaseLoader`` is how the serving core loads a release: verified so, and run by llama.cpp in a
child process of its own.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.policies.errors import LoadRefused, SignatureInvalid
from conveyor.policies.guardrails import GuardrailPolicy
from conveyor.registry.workspace import Workspace
from conveyor.serving.guardrails import Guardrails
from conveyor.serving.llm import _quiet_runtime, open_retriever, system_prompt
from conveyor.serving.llm_process import ReleaseProcess
from conveyor.serving.models import verified_files
from conveyor.serving.retrieval import Retriever
from conveyor.serving.runtime import GenerateRuntime, Served

__all__ = ["ReleaseLoader", "ServedRelease", "VerifiedRelease", "load_release"]


@dataclass(frozen=True)
class VerifiedRelease:
    """A verified release's files on local disk, read: what the gateway needs to serve it."""

    name: str
    version: str
    folder: Path
    version_digest: str
    signer: str
    manifest: dict[str, Any]
    template: str
    guardrails: Guardrails = field(repr=False)
    tokenizer: Any = field(repr=False)
    retriever: Retriever | None = field(default=None, repr=False)

    @property
    def limits(self) -> dict[str, int]:
        return self.manifest["limits"]

    @property
    def pricing(self) -> dict[str, float]:
        return self.manifest["pricing"]

    @property
    def mode(self) -> str:
        return str(self.manifest["runtime"].get("mode", "chat"))

    @property
    def prompt_version(self) -> str:
        prompt = self.manifest["prompt"]
        return f"{prompt['name']}/{prompt['version']}"

    def count(self, text: str) -> int:
        """Tokens ``text`` takes with this release's tokenizer."""
        return len(self.tokenizer.tokenize(text.encode(), add_bos=False, special=False))

    def discard(self) -> None:
        shutil.rmtree(self.folder.parent, ignore_errors=True)


ServedRelease = Served[GenerateRuntime]  # a verified release and the runtime its model runs in


def load_release(ws: Workspace, name: str, version: str, ledger: Any, workspace: Path) -> VerifiedRelease:
    """Verify ``name/version`` (every link of ``conveyor verify``, the weights' digest among them)
    and read it from the verified copy; ``LoadRefused`` when anything fails."""
    import yaml

    ref = f"{name}/{version}"
    with verified_files(ref, workspace, lambda keep: ws.verify_ref(ref, ledger, keep=keep)) as (report, files):
        try:
            manifest = json.loads((files / "release.json").read_text())
            template = (files / manifest["prompt"]["file"]).read_text(encoding="utf-8")
            policy = GuardrailPolicy.model_validate(
                yaml.safe_load((files / manifest["guardrails"]["file"]).read_text(encoding="utf-8"))
            )
            guardrails = Guardrails(policy, system_prompt(template, manifest))
            retriever = open_retriever(files, manifest)
            from llama_cpp import Llama

            _quiet_runtime()
            tokenizer = Llama(model_path=str(files / manifest["weights"]["file"]), vocab_only=True, verbose=False)
        except (OSError, ValueError, KeyError, TypeError, SignatureInvalid) as exc:
            raise LoadRefused(f"{ref} cannot be served: {type(exc).__name__}: {exc}") from None
    return VerifiedRelease(
        str(report.name),
        str(report.version),
        files,
        str(report.version_digest),
        str(report.signer),
        manifest,
        template,
        guardrails,
        tokenizer,
        retriever,
    )


class ReleaseLoader:
    """An LLM project's releases: verified by ``load_release``, each model run by llama.cpp in a
    child process of its own (``ReleaseProcess``), the cores shared among the models that take traffic."""

    llm = True
    judge_every = 5  # canary answers between two judgements
    stopping_grace = 0.0

    def __init__(self, ws: Workspace, *, max_waiting: int) -> None:
        self.ws, self.max_waiting = ws, max_waiting

    def verify(self, name: str, version: str, ledger: Any) -> VerifiedRelease:
        return load_release(self.ws, name, version, ledger, self.ws.home / "serving" / "releases")

    def open(self, verified: VerifiedRelease, role: str, timeout: float | None) -> GenerateRuntime:

        runtime = verified.manifest["runtime"]
        return ReleaseProcess(
            verified.folder / verified.manifest["weights"]["file"],
            {
                "context": int(runtime["context"]),
                "threads": int(runtime["threads"]),
                "seed": int(verified.manifest["generation"].get("seed", 0)),
                "chat_format": runtime.get("chat_format"),
            },
            name=f"{verified.name}-{verified.version}-{role}",
            max_waiting=self.max_waiting,
        )

    def fits(self, verified: VerifiedRelease) -> str | None:
        return None  # the OpenAI API's shapes do not depend on the release

    def accepted(self, verified: VerifiedRelease) -> None:
        pass

    def arranged(self, routed: list[Served[GenerateRuntime]], fallback: Served[GenerateRuntime] | None) -> None:
        """The models that take traffic split the cores between them: llama.cpp's threads spin, so a
        champion and a canary each on every core answer slower than each on its half
        (``bench/llm_threads.py``)."""
        share = max(1, len(os.sched_getaffinity(0)) // max(1, len(routed)))
        for model in (*routed, fallback):
            if model is not None:
                model.runtime.set_threads(share)

    def close(self) -> None:
        pass
