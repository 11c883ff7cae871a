"""The LLM commands as a user types them: a clear paragraph and the CI exit code, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conveyor.cli import app
from tests.conftest import copy_llm_project

runner = CliRunner()


def conveyor(config: Path, *args: str):
    return runner.invoke(app, ["--config", str(config), *args])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return copy_llm_project(tmp_path / "project")


def test_config_check_summarises_an_llm_project(config: Path) -> None:
    result = conveyor(config, "config", "check")
    assert result.exit_code == 0, result.output
    assert "valid (an LLM release)" in result.output
    assert "golden.jsonl (10 cases), redteam.jsonl (10 cases)" in result.output
    summary = json.loads(conveyor(config, "config", "check", "--json").stdout)
    assert summary["kind"] == "llm" and summary["valid"] is True and summary["name"] == "conveyor-assistant"


def test_a_config_mistake_exits_2_with_the_field_named(config: Path) -> None:
    document = yaml.safe_load(config.read_text())
    document["generation"]["max_tokens"] = 9999
    config.write_text(yaml.safe_dump(document))
    result = conveyor(config, "llm", "build")
    assert result.exit_code == 2
    assert "`generation.max_tokens`" in result.output
    assert "Traceback" not in result.output


def test_a_refused_build_exits_1_and_says_nothing_was_registered(config: Path) -> None:
    document = yaml.safe_load(config.read_text())
    document["evaluation"]["timeout_seconds"] = 0.2
    config.write_text(yaml.safe_dump(document))
    result = conveyor(config, "llm", "build")
    assert result.exit_code == 1, result.output
    assert "ran out of time" in result.output and "Nothing was signed or registered" in result.output


def test_llm_commands_on_a_tabular_project_say_which_file_to_pass(tmp_path: Path) -> None:
    from tests.conftest import REPO

    result = runner.invoke(app, ["--config", str(REPO / "conveyor.yaml"), "llm", "build"])
    assert result.exit_code == 2
    assert "is not an LLM project" in result.output and "--config assistant.yaml" in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--by", "colour"], "--by 'colour' is not a grouping"),
        (["--since", "yesterday"], "--since 'yesterday' is neither a duration nor a date"),
    ],
)
def test_cost_report_mistakes_exit_2_with_what_to_give(config: Path, args: list[str], says: str) -> None:
    result = conveyor(config, "cost", "report", *args)
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output


def test_cost_report_of_an_empty_log_says_so(config: Path) -> None:
    result = conveyor(config, "cost", "report", "--since", "7d")
    assert result.exit_code == 0 and "No LLM requests in the inference log since" in result.output


def test_an_api_key_for_a_team_the_gateway_policy_does_not_have_is_refused(config: Path) -> None:
    result = conveyor(config, "api-key", "create", "eve", "--team", "nobody")
    assert (
        result.exit_code != 0 and "There is no team 'nobody'" in result.output and "Its teams: default" in result.output
    )
    result = conveyor(config, "api-key", "create", "eve", "--team", "research")
    assert result.exit_code == 0
    assert "team research" in conveyor(config, "api-key", "list").output


def test_api_keys_are_made_listed_and_revoked_in_json(config: Path) -> None:
    made = json.loads(conveyor(config, "api-key", "create", "ci-bot", "--team", "research", "--json").stdout)
    assert made["name"] == "ci-bot" and made["team"] == "research" and len(made["key"]) > 30
    listed = json.loads(conveyor(config, "api-key", "list", "--json").stdout)
    assert [(e["name"], e["admin"], e["team"]) for e in listed] == [("ci-bot", False, "research")]
    assert made["key"] not in json.dumps(listed), "a listing never shows a key"
    rotated = json.loads(conveyor(config, "api-key", "rotate", "ci-bot", "--json").stdout)
    assert rotated["key"] != made["key"]
    assert json.loads(conveyor(config, "api-key", "revoke", "ci-bot", "--json").stdout) == {
        "name": "ci-bot",
        "revoked": 1,
    }
    assert json.loads(conveyor(config, "api-key", "list", "--json").stdout) == []


def test_serve_checks_an_llm_project_before_starting(config: Path) -> None:
    (config.parent / "policies" / "gateway.yaml").write_text("teams: {default: {tokens_per_minute: -5}}\n")
    result = conveyor(config, "serve")
    assert result.exit_code == 2 and "tokens_per_minute" in result.output and "Traceback" not in result.output


def test_config_check_names_the_knowledge_base_and_its_version(config: Path) -> None:
    result = conveyor(config, "config", "check")
    assert result.exit_code == 0, result.output
    assert "knowledge  llm/kb: 6 documents, version " in result.output and ".dir (not DVC-tracked)" in result.output


def test_feedback_mistakes_exit_with_what_was_wrong_and_record_nothing(config: Path, tmp_path: Path) -> None:
    missing = conveyor(config, "feedback", "add", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 1 and "No feedback file" in missing.output and "Traceback" not in missing.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"request_id": "r1", "rating": "great"}\n')
    result = conveyor(config, "feedback", "add", str(bad))
    assert result.exit_code == 1 and "line 1: `rating`" in result.output and "Nothing was recorded" in result.output
    assert not (config.parent / "llm" / "eval" / "feedback.candidates.jsonl").exists()
    unreviewed = conveyor(config, "feedback", "accept", str(tmp_path / "none.jsonl"))
    assert unreviewed.exit_code == 1 and "No candidates file" in unreviewed.output


def test_llm_check_without_a_champion_says_what_to_do(config: Path) -> None:
    result = conveyor(config, "llm", "check")
    assert result.exit_code == 3 and "has no champion" in result.output and "conveyor promote" in result.output
    assert "Traceback" not in result.output
