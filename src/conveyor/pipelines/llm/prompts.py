"""Prompts, versioned in MLflow's prompt registry.

The template is registered under the project's prompt name; an unchanged template reuses the
version that already holds it, so a rebuild does not grow the registry. The release keeps its
own copy of the template (what is served), and names the registry version and digest it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.registry.digests import bytes_digest, json_digest

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
    """The registry version holding ``template`` under ``name``: the newest one that holds exactly
    this text, else a new one (tagged with its digest and the release it was built for)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    digest = bytes_digest(template.encode())
    try:
        versions = list(mlflow.MlflowClient().search_prompt_versions(name, max_results=1000))
    except MlflowException:
        versions = []
    same = [v for v in versions if v.template == template]
    if same:
        found = max(int(v.version) for v in same)
        return RegisteredPrompt(name, found, template, digest, prompt_digest(name, found, digest), False)
    version = mlflow.genai.register_prompt(
        name=name,
        template=template,
        commit_message=f"built for release {release}",
        tags={"conveyor.template_digest": digest, "conveyor.release": release},
    )
    return RegisteredPrompt(
        name, int(version.version), template, digest, prompt_digest(name, int(version.version), digest), True
    )
