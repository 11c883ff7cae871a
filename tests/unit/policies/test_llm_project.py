"""The LLM project config and its evaluation sets: each mistake one paragraph naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.policies.errors import ConfigInvalid, DataInvalid, PolicyInvalid
from conveyor.policies.llm import is_llm_project, load_llm_project, read_eval_set, template_variables
from tests.conftest import copy_llm_project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_llm_project(tmp_path / "project")


def _edit(path: Path, change: Any) -> None:
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_the_repository_projects_load(project: Path) -> None:
    loaded = load_llm_project(project)
    assert loaded.name == "conveyor-assistant" and loaded.fallback == "conveyor-assistant-fallback"
    fallback = load_llm_project(project.parent / "assistant-fallback.yaml")
    assert fallback.model.mode == "completion" and len(fallback.model.parts) == 4
    assert is_llm_project(project) and not is_llm_project(Path(__file__).parents[3] / "conveyor.yaml")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d.update(nmae="x"), "`nmae` is not a known key (did you mean `name`?)"),
        (lambda d: d["model"].update(sha256="abc"), "`model.sha256`"),
        (lambda d: d["model"].update(parts=[{"package": "p", "file": "f"}]), "either `file`"),
        (lambda d: d["generation"].update(max_tokens=1000), "`generation.max_tokens` (1000) is above"),
        (lambda d: d.update(fallback="conveyor-assistant"), "names this release itself"),
        (lambda d: d["generation"].update(temperature=3), "`generation.temperature`"),
        (lambda d: d.pop("pricing"), "`pricing` is missing"),
        (lambda d: d["evaluation"].update(sets=["llm/eval/none.jsonl"]), "`evaluation.sets.0` names"),
        (lambda d: d["prompt"]["variables"].update(unused="x"), "sets unused, which the template never uses"),
    ],
)
def test_a_mistake_names_the_field(project: Path, change: Any, named: str) -> None:
    _edit(project, change)
    with pytest.raises(ConfigInvalid) as refused:
        load_llm_project(project)
    assert named in refused.value.message
    assert "\n" not in refused.value.message


def test_a_template_variable_that_nothing_supplies_is_named(project: Path) -> None:
    template = project.parent / "llm" / "prompts" / "assistant.txt"
    template.write_text("You help {{product}} users in {{language}}. Notes: {{passages}}")
    with pytest.raises(ConfigInvalid, match=r"uses \{\{language\}\}, which nothing supplies"):
        load_llm_project(project)
    assert template_variables("{{ a }} {{b}} {c}") == {"a", "b"}


def test_a_knowledge_base_needs_a_place_for_its_passages_and_a_folder(project: Path) -> None:
    template = project.parent / "llm" / "prompts" / "assistant.txt"
    template.write_text("You help {{product}} users.")
    with pytest.raises(ConfigInvalid, match=r"has no \{\{passages\}\}"):
        load_llm_project(project)
    template.write_text("You help {{product}} users. Notes: {{passages}}")
    _edit(project, lambda d: d["knowledge"].update(documents="llm/nowhere"))
    with pytest.raises(ConfigInvalid, match=r"`knowledge\.documents` names llm/nowhere"):
        load_llm_project(project)
    _edit(project, lambda d: d.pop("knowledge"))
    with pytest.raises(ConfigInvalid, match="no `knowledge` section"):
        load_llm_project(project)


def test_a_completion_template_must_hold_the_question(project: Path) -> None:
    fallback = project.parent / "assistant-fallback.yaml"
    (project.parent / "llm" / "prompts" / "assistant-completion.txt").write_text("About {{product}}.\nAnswer:")
    with pytest.raises(ConfigInvalid, match=r"has no \{\{question\}\}"):
        load_llm_project(fallback)


def test_a_broken_guardrail_policy_stops_the_project_from_loading(project: Path) -> None:
    policy = project.parent / "policies" / "guardrails.yaml"
    _edit(policy, lambda d: d["input"]["injection"].update(broken="(unclosed"))
    with pytest.raises(PolicyInvalid, match="pattern 'broken' is not a regular expression"):
        load_llm_project(project)


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_eval_set_lines_are_checked_one_by_one(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "set.jsonl",
        [
            {"id": "a", "question": "q"},
            "not json",
            {"id": "a", "question": "again"},
            {"id": "b", "question": "q", "expect": {"json_schema": {"type": "nonsense"}}},
            {"id": "c", "question": "q", "expect": {"refuse": True, "colour": "red"}},
        ],
    )
    with pytest.raises(DataInvalid) as refused:
        read_eval_set(path)
    message = refused.value.message
    assert "line 2" in message
    assert "line 3: id 'a' is already used on line 1" in message
    assert "line 4: `expect.json_schema`: not a valid JSON schema" in message
    assert "line 5: `expect.colour`" in message


def test_an_empty_eval_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataInvalid, match="holds no cases"):
        read_eval_set(_write(tmp_path / "empty.jsonl", [""]))
