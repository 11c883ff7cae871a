"""The Kubernetes manifests (deploy/kubernetes/), validated offline against Kubernetes' own
OpenAPI schemas (kubernetes-validate, strict: no unknown field), and tied to the code: the
settings they set exist, the probes are the service's, the job template renders to a valid Job."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from conveyor.registry.settings import Settings

FOLDER = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VERSION = "1.33"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{p.name}:{d['kind']}/{d['metadata']['name']}", d)
        for p in sorted(FOLDER.glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]


@pytest.mark.parametrize(("where", "document"), _documents(), ids=[w for w, _ in _documents()])
def test_every_manifest_is_valid_kubernetes(where: str, document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, VERSION, strict=True)


def test_a_broken_manifest_is_caught() -> None:  # the check itself can fail
    broken = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "two", "selector": {}, "template": {}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_the_profile_sets_conveyor_s_own_settings_and_nothing_else() -> None:
    profile = next(d for w, d in _documents() if w.endswith("ConfigMap/conveyor-profile"))
    known = {f"CONVEYOR_{name.upper()}" for name in Settings.model_fields}
    assert set(profile["data"]) <= known
    assert profile["data"]["CONVEYOR_PROFILE"] == "servers"
    from conveyor.registry.settings import SERVER_SETTINGS

    assert {f"CONVEYOR_{name.upper()}" for name in SERVER_SETTINGS} <= set(profile["data"])


def test_the_replicas_probe_bentoml_s_endpoints_and_scale_on_latency() -> None:
    documents = dict(_documents())
    pod = documents["serving.yaml:Deployment/conveyor-serving"]["spec"]["template"]["spec"]["containers"][0]
    assert pod["readinessProbe"]["httpGet"]["path"] == "/readyz" and pod["livenessProbe"]["httpGet"]["path"] == "/livez"
    hpa = documents["serving.yaml:HorizontalPodAutoscaler/conveyor-serving"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "conveyor-serving" and hpa["minReplicas"] >= 2
    assert any(m["type"] == "Pods" and "latency" in m["pods"]["metric"]["name"] for m in hpa["metrics"])
    source = (Path(__file__).resolve().parents[2] / "src" / "conveyor" / "serving" / "metrics.py").read_text()
    assert "conveyor_predict_latency_seconds" in source  # the histogram the adapter's rule reads


def _render(value: Any, variables: dict[str, Any]) -> Any:
    """The job template with each whole-string placeholder replaced by its variable's value."""
    if isinstance(value, dict):
        return {k: _render(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, variables) for v in value]
    if isinstance(value, str):
        whole = re.fullmatch(r"\{\{ (\w+) \}\}", value)
        if whole:
            return variables[whole.group(1)]
        return re.sub(r"\{\{ (\w+) \}\}", lambda m: str(variables[m.group(1)]), value)
    return value


def test_the_prefect_job_template_renders_to_a_valid_job() -> None:
    template = json.loads((FOLDER / "prefect-job-template.json").read_text())
    variables = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    variables["command"] = variables["command"].split()  # the worker passes it as the container's args
    variables["env"] = [{"name": "PREFECT__FLOW_RUN_ID", "value": "0"}]  # the worker's form: a list of pairs
    job = _render(template["job_configuration"]["job_manifest"], variables)
    kubernetes_validate.validate(job, VERSION, strict=True)
    used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
    assert used <= set(variables)  # every placeholder has a variable
