"""Prompts, versioned in MLflow's prompt registry.

The template is registered under the project's prompt name; an unchanged template reuses the
version that already holds it, so a rebuild does not grow the registry. The release keeps its
own copy of the template (what is served), and names the registry version and digest it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.digests import bytes_digest, json_digest

__all__ = ["RegisteredPrompt", "prompt_digest", "register_prompt"]


@dataclass(frozen=True)
class RegisteredPrompt:
    name: str
    version: int
    template: str
    template_digest: str  # sha256 of the template's bytes
    digest: str  # content address of (registry, name, version, template)
    new: bool  # a new version was made

    @property
    def uri(self) -> str:
        return f"prompts:/{self.name}/{self.version}"


def prompt_digest(name: str, version: int, template_digest: str) -> str:
    return json_digest({"registry": "mlflow-prompts", "name": name, "version": version, "template": template_digest})


def register_prompt(name: str, template: str, *, release: str) -> RegisteredPrompt:
    """The registry version holding ``template`` under ``name``: the latest one if it holds the
    same text, else a new one (tagged with its digest and the release it was built for)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    digest = bytes_digest(template.encode())
    try:
        latest = mlflow.genai.load_prompt(f"prompts:/{name}@latest")
    except MlflowException:
        latest = None
    if latest is not None and latest.template == template:
        return RegisteredPrompt(
            name, int(latest.version), template, digest, prompt_digest(name, int(latest.version), digest), False
        )
    version = mlflow.genai.register_prompt(
        name=name,
        template=template,
        commit_message=f"built for release {release}",
        tags={"conveyor.template_digest": digest, "conveyor.release": release},
    )
    return RegisteredPrompt(
        name, int(version.version), template, digest, prompt_digest(name, int(version.version), digest), True
    )
