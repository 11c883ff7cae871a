"""The Prometheus alert rules and the Grafana dashboard in the repository: valid for the tools that
read them, and naming only series the service exports (from its start, at 0)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conveyor.serving.metrics import ServiceMetrics
from tests.conftest import REPO

RULES = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "conveyor.json"
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None,
    reason="promtool (Debian's prometheus package) is not installed; scripts/with-test-services.sh installs it",
)


def _exported() -> set[str]:
    """Every series name a fresh service exports once it serves one version of a tabular and an LLM model."""
    metrics = ServiceMetrics()
    for model, llm in (("m", False), ("a", True)):
        metrics.start(model, llm=llm)
        metrics.deployed(model, "1", "champion", llm=llm)
    metrics.latency.labels("m", "1", "champion").observe(0.01)
    for histogram in (metrics.llm_ttft, metrics.llm_tpot, metrics.llm_duration):
        histogram.labels("a", "1", "champion").observe(0.1)
    metrics.llm_tokens.labels("t", "a", "1", "input").inc(0)
    metrics.llm_cost.labels("t", "a", "1").inc(0)
    metrics.llm_budget.labels("t").set(0)
    metrics.llm_guardrails.labels("a", "1", "rule", "block").inc(0)
    metrics.unknown_categories.labels("m", "c").inc(0)
    text = metrics.render()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _series(expr: str) -> set[str]:
    words = set(re.findall(r"\b(conveyor_[a-z_]+)\b", expr))
    return words


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_the_alerts_and_the_dashboard_name_only_series_the_service_exports() -> None:
    exported = _exported()
    for expr in _rule_exprs() + _dashboard_exprs():
        missing = _series(expr) - exported
        assert not missing, f"{expr!r} names {missing}, which the service does not export"
    watched = set().union(*(_series(e) for e in _rule_exprs()))
    assert {"conveyor_serving_info", "conveyor_drift_detected", "conveyor_quality_breach"} <= watched


def test_the_dashboard_is_one_grafana_dashboard_with_a_model_choice() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "conveyor-service"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "model"}
    for panel in dashboard["panels"]:
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
    titles = " ".join(p["title"] for p in dashboard["panels"])
    assert "Who serves what" in titles and "Canary weight" in titles
    for series in ("conveyor_llm_feedback", "conveyor_llm_fallbacks", "conveyor_llm_cache", "time_per_output_token"):
        assert any(series in e for e in _dashboard_exprs()), f"no panel shows {series}"
    canary = next(p for p in dashboard["panels"] if p["title"] == "Canary weight")
    assert canary["fieldConfig"]["defaults"]["unit"] == "percentunit"  # the gauge is a 0-1 ratio


@needs_promtool
def test_promtool_accepts_the_rules_and_their_tests_fire_as_written(tmp_path: Path) -> None:
    checked = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=RULES, capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    (tmp_path / "conveyor-admin-key").write_text("k\n")
    shutil.copy(RULES / "alerts.yml", tmp_path)
    shutil.copy(RULES / "prometheus.yml", tmp_path)
    config = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    """Grafana's variables filled in as it would, each query a recording rule for promtool to parse."""
    exprs = [e.replace("$__rate_interval", "5m").replace("$model", "m") for e in _dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"q:{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    checked = subprocess.run([promtool, "check", "rules", "queries.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "q:0", "expr": "sum by (model"}]}]})
    )
    assert subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True).returncode != 0


def test_every_verdict_panel_says_each_verdict_in_words() -> None:
    from conveyor.registry.verdicts import VERDICT_NAMES

    panels = json.loads(DASHBOARD.read_text())["panels"]
    verdicts = [p for p in panels if any(re.search(r"drift_detected|quality_breach", t["expr"]) for t in p["targets"])]
    assert len(verdicts) == 2
    for panel in verdicts:
        (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
        assert set(mapping["options"]) == {str(code) for code in VERDICT_NAMES}, panel["title"]
        assert mapping["options"]["1"]["color"] == "red" and mapping["options"]["-1"]["text"] == "never checked"


def test_one_verdict_encoding_for_tabular_and_llm_checks() -> None:
    metrics = ServiceMetrics()
    for status, quality, drift_code, quality_code in (
        ("quality", "breach", "0.0", "1.0"),  # an LLM check whose breach is its feedback: no drift, a quality breach
        ("insufficient", "not_enough_data", "2.0", "2.0"),
        ("drift", "undefined", "1.0", "3.0"),
        ("no_drift", "ok", "0.0", "0.0"),
    ):
        metrics.verdicts("a", {"status": status}, {"status": quality})
        text = metrics.render()
        assert f'conveyor_drift_detected{{model="a"}} {drift_code}' in text, status
        assert f'conveyor_quality_breach{{model="a"}} {quality_code}' in text, quality
    with pytest.raises(ValueError, match="unknown drift status 'drifty'"):
        metrics.verdicts("a", {"status": "drifty"}, None)


def test_who_serves_what_and_the_last_verdicts_are_series() -> None:
    metrics = ServiceMetrics()
    metrics.start("m", llm=False)
    text = metrics.render()
    assert 'conveyor_drift_detected{model="m"} -1.0' in text and 'conveyor_quality_breach{model="m"} -1.0' in text
    metrics.deployed("m", "1", "champion", llm=False)
    metrics.deployed("m", "2", "canary", llm=False)
    metrics.deployed("m", "2", "champion", llm=False)  # the canary became champion
    metrics.retired("m", "canary")
    metrics.verdicts("m", {"status": "drift", "share": 0.5, "_at": 1_700_000_000.0}, {"status": "ok"})
    text = metrics.render()
    for line in (
        'conveyor_serving_info{model="m",role="champion",version="1"} 0.0',
        'conveyor_serving_info{model="m",role="champion",version="2"} 1.0',
        'conveyor_serving_info{model="m",role="canary",version="2"} 0.0',
        'conveyor_drift_detected{model="m"} 1.0',
        'conveyor_drift_share{model="m"} 0.5',
        'conveyor_quality_breach{model="m"} 0.0',
        'conveyor_check_timestamp_seconds{check="drift",model="m"} 1.7e+09',
    ):
        assert line in text, line
