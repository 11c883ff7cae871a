"""The LLM loop for real, on the real local model: a DVC-tracked knowledge base validated, indexed
and signed into the release; live traffic (crafted rows of the inference log) judged against the
release's evaluation traffic; the trigger's window and cooldown; a new knowledge version rebuilt
into a canary; negative feedback grown into the evaluation set, and the re-evaluation that fails
the champion rolling back to the former champion that passes."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.registry.pages import read_heading
from tests.conftest import REPO, copy_llm_project, shorten_eval_sets

pytestmark = pytest.mark.slow

NAME = "conveyor-assistant"
# Before the feedback document is added, this question's passages come from canary.md and
# rollback.md; after it, from feedback.md and rollback.md (BM25 over the same words: no model involved).
DISPLACED = "When does the champion roll back after it fails?"


def _open(project: Path) -> Any:
    from conveyor.api import Workspace

    return Workspace.open(project, home=str(project.parent / ".conveyor"), actor="tester")


def _trim(project: Path) -> None:
    """A faster evaluation: a few golden and red-team cases, every knowledge case, short answers;
    the gate asks every knowledge case to retrieve its sources."""
    root = project.parent
    shorten_eval_sets(root, golden=3, redteam=2)
    config = yaml.safe_load(project.read_text())
    config["generation"]["max_tokens"] = 16
    project.write_text(yaml.safe_dump(config, sort_keys=False))
    promotion = yaml.safe_load((root / "policies" / "promotion.yaml").read_text())
    promotion["llm"]["thresholds"] = {"pass_rate": {"min": 0.5}, "retrieval_hit_rate": {"min": 1.0}}
    promotion["llm"]["beat_champion"] = None
    promotion["llm"]["scorers"] = ["refusal", "retrieval"]
    (root / "policies" / "promotion.yaml").write_text(yaml.safe_dump(promotion, sort_keys=False))
    drift = yaml.safe_load((root / "policies" / "drift.yaml").read_text())
    drift["llm"] |= {"min_rows": 20, "cooldown_minutes": 60, "feedback": {"min_ratings": 3, "max_negative_share": 0.5}}
    (root / "policies" / "drift.yaml").write_text(yaml.safe_dump(drift, sort_keys=False))


def _dvc_add(root: Path, path: str, *, init: bool = False) -> None:
    from dvc.repo import Repo

    if init:
        Repo.init(str(root), no_scm=True).close()
    with Repo(str(root)) as repo:
        repo.add([str(root / path)])


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("CONVEYOR_", "MLFLOW_", "PREFECT_")):
            del os.environ[name]
    try:
        project = copy_llm_project(tmp_path_factory.mktemp("llm-loop") / "project")
        _trim(project)
        _dvc_add(project.parent, "llm/kb", init=True)
        ws = _open(project)
        first = ws.build_release()
        assert ws.promote(f"{NAME}/{first.version}", to="champion").decision.ok
        yield {"ws": ws, "project": project, "root": project.parent, "first": first}
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def ws(loop: dict[str, Any]) -> Any:
    loop["ws"].stores.prepare()
    return loop["ws"]


def _events(ws: Any, kind: str) -> list[Any]:
    with ws.stores.ledger() as ledger:
        return [e for e in (ledger.get(s) for s in range(1, ledger.count() + 1)) if e.kind == kind]


def _log(ws: Any, version: str, rows: list[dict[str, Any]], *, key: str = "alice") -> list[str]:
    """Rows of the inference log as the gateway writes them (crafted traffic); their request ids."""
    from conveyor.registry.inference_log import InferenceLog, LlmLogEntry

    ids = []
    with InferenceLog(ws.stores.inference_dir(NAME)) as log:
        for row in rows:
            request_id = f"chatcmpl-{uuid.uuid4().hex}"
            ids.append(request_id)
            log.record(
                LlmLogEntry(
                    request_id=request_id,
                    time=datetime.now(UTC),
                    model=NAME,
                    version=version,
                    served_by="champion",
                    deployment=None,
                    release_digest=None,
                    prompt_version=None,
                    team="default",
                    key=key,
                    endpoint="chat",
                    stream=False,
                    prompt_tokens=40,
                    completion_tokens=int(row["completion_tokens"]),
                    cost_usd=0.0,
                    ttft_ms=float(row.get("ttft_ms", 300.0)),
                    duration_ms=500.0,
                    cached=False,
                    status="blocked" if row.get("blocked") else "ok",
                    finish_reason="stop",
                    refused=bool(row.get("refused", False)),
                    retrieval_score=row.get("retrieval_score"),
                    question=row["question"],
                    answer=row["answer"],
                )
            )
    return ids


def _like_evaluation(ws: Any, version: str, n: int) -> list[dict[str, Any]]:
    """``n`` answers drawn (seeded) from the release's own evaluation: traffic that has not moved."""
    import random

    report = json.loads(Path(_events(ws, "release.evaluated")[0].details["report"]).read_text())
    cases = report["cases"]
    pick = random.Random(0)
    return [
        {
            "question": c["question"],
            "answer": c["answer"]["text"],
            "completion_tokens": c["answer"]["completion_tokens"],
            "retrieval_score": c["answer"]["retrieval_score"],
            "refused": c["answer"]["refused"],
            "blocked": bool(c["answer"]["blocked_by"]),
        }
        for c in (pick.choice(cases) for _ in range(n))
    ]


# -- the knowledge base in the release -------------------------------------------------------------


def test_the_index_is_a_signed_file_of_the_release_and_answers_name_their_passages(ws: Any, loop: dict) -> None:
    first = loop["first"]
    built = _events(ws, "release.built")[-1]
    assert any(f.startswith("index/") for f in built.details["files"]), "the index is one of the signed files"
    (versioned,) = _events(ws, "knowledge.versioned")
    recorded = yaml.safe_load((loop["root"] / "llm" / "kb.dvc").read_text())["outs"][0]["md5"]
    assert versioned.details["md5"] == recorded, "the knowledge version is DVC's own md5 of the folder"
    (indexed,) = _events(ws, "index.built")
    assert versioned.outputs[0] in indexed.inputs and indexed.outputs[0] in built.inputs
    reply = ws.ask(f"{NAME}/{first.version}", "How do I roll back a model by hand?")
    assert "rollback.md#0" in [p["id"] for p in reply.passages]
    assert reply.passages[0]["digest"] in versioned.outputs, "each passage names its document's digest"
    outside = ws.ask(f"{NAME}/{first.version}", "Who won the world cup?")
    assert outside.passages == () and outside.retrieval_score < 0.8


# -- live traffic against the evaluation -----------------------------------------------------------


def test_crafted_traffic_gets_the_expected_verdicts(ws: Any, loop: dict) -> None:
    version = loop["first"].version
    _log(ws, version, _like_evaluation(ws, version, 40))
    calm = ws.check_llm("40", act=False).result
    assert calm.status == "ok", calm.describe()

    outside = [
        {
            "question": f"What is the capital of country {i}?",
            "answer": "I do not know.",
            "completion_tokens": 5,
            "retrieval_score": 0.1,
        }
        for i in range(40)
    ]
    _log(ws, version, outside)
    breach = ws.check_llm("40", act=False).result
    assert breach.status == "quality"
    (rate,) = [r for r in breach.rates if r.name == "out_of_knowledge"]
    assert rate.breached and rate.live == 1.0 and rate.p_value < 0.01
    saved = ws.project_file.read_text()
    config = yaml.safe_load(saved)
    config["knowledge"]["min_score"] = 0.0  # the project's file moves on; the release keeps its own threshold
    ws.project_file.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        assert ws.check_llm("40", act=False).result.status == "quality"
    finally:
        ws.project_file.write_text(saved)

    rambling = [
        {
            "question": "Please explain, at great length and with every detail you can think of, " * 4 + f"topic {i}",
            "answer": "word " * 200,
            "completion_tokens": 200,
            "retrieval_score": 2.0,
        }
        for i in range(40)
    ]
    _log(ws, version, rambling)
    drifted = ws.check_llm("40", act=False).result
    assert drifted.status == "drift"
    assert {"question_length", "answer_length", "completion_tokens"} <= set(drifted.drifted)
    assert drifted.html is not None and drifted.html.is_file()
    checked = _events(ws, "drift.checked")[-3:]
    assert [e.details["status"] for e in checked] == ["quality", "quality", "drift"]
    assert all(e.details["trigger"] is None or "not started" in e.details["trigger"] for e in checked)
    # ... and each check's quality verdict is the quality record it is, which status and alerts read
    quality = _events(ws, "quality.checked")[-4:]
    assert [e.details["status"] for e in quality] == ["ok", "breach", "breach", "ok"]
    assert "out_of_knowledge rate" in quality[1].details["reason"]
    assert ws.status()["quality"]["status"] == "ok" and ws.status()["drift"]["status"] == "drift"


def test_the_trigger_fires_once_per_breach_window_and_respects_the_cooldown(ws: Any, loop: dict) -> None:
    version = loop["first"].version
    outside = [
        {"question": f"How tall is mountain {i}?", "answer": "No idea.", "completion_tokens": 4, "retrieval_score": 0.0}
        for i in range(30)
    ]
    _log(ws, version, outside)
    fired = ws.check_llm("30")
    assert fired.decision is not None and fired.decision.start
    assert fired.action is not None and fired.action.status == "completed", fired.action
    assert "still passes" in fired.action.reason
    again = ws.check_llm("30")
    assert not again.decision.start and "already started for this window" in again.decision.reason
    assert again.action is None
    _log(ws, version, outside)
    later = ws.check_llm("30")
    assert not later.decision.start and later.decision.reason.startswith("cooldown")
    (evaluated,) = [e for e in _events(ws, "release.evaluated") if e.details.get("cause") == fired.trigger]
    assert evaluated.details["version"] == version and evaluated.details["passed"]


# -- a new knowledge version -----------------------------------------------------------------------


def test_a_new_knowledge_version_is_rebuilt_evaluated_and_made_the_canary_once(ws: Any, loop: dict) -> None:
    root = loop["root"]
    found, action = ws.check_knowledge()
    assert action is None and "this knowledge version" in found
    shutil.copy(REPO / "llm" / "kb-updates" / "feedback.md", root / "llm" / "kb" / "feedback.md")
    _dvc_add(root, "llm/kb")
    found, action = ws.check_knowledge()
    assert action is not None and action.status == "completed" and action.canary, action
    assert str(ws.stores.mlflow().get_model_version_by_alias(NAME, "canary").version) == action.version
    trigger = _events(ws, "retraining.triggered")[-1]
    assert trigger.details["cause"] == "knowledge"
    built = _events(ws, "release.built")[-1]
    assert trigger.outputs[0] in built.inputs, "the rebuild names its cause"
    versioned = _events(ws, "knowledge.versioned")[-1]
    assert versioned.outputs[0] == trigger.inputs[0], "the cause is the new knowledge version"
    assert "feedback.md" in versioned.details["documents"]
    found, again = ws.check_knowledge()
    assert again is None and "already started" in found
    loop["second"] = action.version


# -- feedback, the grown set, and the rollback -----------------------------------------------------


def test_negative_feedback_grows_the_set_and_a_failing_reevaluation_rolls_back(
    ws: Any, loop: dict, tmp_path: Path
) -> None:
    first, second = loop["first"].version, loop["second"]
    assert ws.promote(f"{NAME}/{second}", to="champion").decision.ok
    asked = _log(
        ws,
        second,
        [
            {
                "question": DISPLACED,
                "answer": "When the feedback says so.",
                "completion_tokens": 6,
                "retrieval_score": 2.0,
            }
        ]
        * 3,
    )
    (stranger,) = _log(
        ws,
        second,
        [{"question": "Is this mine?", "answer": "No.", "completion_tokens": 2, "retrieval_score": 1.0}],
        key="bob",
    )
    ratings = tmp_path / "ratings.jsonl"
    rows = [
        {"request_id": r, "rating": "down", "correction": "When a canary regresses, the canary analysis rolls it back."}
        for r in asked
    ]
    rows.append({"request_id": stranger, "rating": "down", "key": "mallory"})  # another key's answer: not joined
    ratings.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    added = ws.add_feedback(ratings)
    assert (added.rows, added.matched, added.negative, added.candidates) == (4, 3, 3, 3)
    assert added.unmatched == [stranger]

    candidates = Path(added.candidates_file)
    reviewed = []
    for number, line in enumerate(candidates.read_text().splitlines()):
        case = json.loads(line)
        assert case["question"] == DISPLACED and case["review"]["status"] == "pending"
        case["review"]["status"] = "accepted" if number == 0 else "rejected"
        case["expect"] = {"sources": ["canary.md"], "refuse": False}  # the reviewer's expectation
        reviewed.append(json.dumps(case))
    candidates.write_text("\n".join(reviewed) + "\n")
    accepted = ws.accept_feedback(candidates)
    assert (accepted.accepted, accepted.rejected, accepted.pending) == (1, 2, 0)

    outcome = ws.check_llm("24h")
    assert outcome.result.status == "quality" and outcome.result.feedback["breached"], outcome.result.describe()
    heading = read_heading(outcome.result.html)  # the page says so first, with the feedback and what it caused
    assert heading is not None and heading.verdict == "quality breach" and heading.status == "breach"
    assert heading.title.startswith(f"LLM traffic of {NAME} version {second}: quality breach")
    assert "3 of 3 rated answers rated down" in " ".join(heading.reasons)
    assert dict(heading.samples)["feedback"].startswith("3 of 3 rated down")
    assert heading.caused is not None and heading.caused.startswith("started a re-evaluation")
    assert outcome.action is not None and outcome.action.status == "rolled_back", outcome.action
    assert outcome.action.version == first
    assert ws.stores.champion(NAME) == first
    (rolled,) = _events(ws, "model.rolled_back")[-1:]
    assert rolled.details["to"] == first and outcome.trigger in rolled.inputs
    judged = {
        e.details["version"]: e.details
        for e in _events(ws, "release.evaluated")
        if e.details.get("cause") == outcome.trigger
    }
    assert not judged[second]["passed"] and f"feedback/{json.loads(reviewed[0])['id']}" in judged[second]["failed"]
    assert judged[first]["passed"]


def test_knowledge_validation_failures_stop_the_build_and_register_nothing(tmp_path: Path) -> None:
    from conveyor.policies.errors import DataInvalid

    saved = dict(os.environ)
    try:
        for name in list(os.environ):
            if name.startswith(("CONVEYOR_", "MLFLOW_", "PREFECT_")):
                del os.environ[name]
        project = copy_llm_project(tmp_path / "project")
        kb = project.parent / "llm" / "kb"
        shutil.copy(kb / "canary.md", kb / "canary-copy.md")
        (kb / "stub.md").write_text("# TODO\n")
        (kb / "contact.md").write_text("For help with promotion, call Margaret Thompson on 415-555-0199 any weekday.\n")
        (kb / "latin1.txt").write_bytes("Caf\xe9 notes about the canary release and its steps.".encode("latin-1"))
        ws = _open(project)
        with pytest.raises(DataInvalid) as refused:
            ws.build_release()
        message = refused.value.message
        for named in ("canary-copy.md", "stub.md", "contact.md", "latin1.txt"):
            assert named in message, message
        assert "PHONE_NUMBER" in message or "phone" in message
        from mlflow.exceptions import MlflowException

        try:
            registered = ws.stores.mlflow().search_model_versions(f"name='{NAME}'")
        except MlflowException:
            registered = []
        assert registered == []
        (validated,) = [e for e in _events(ws, "data.validated") if e.details["suite"] == "conveyor.knowledge/1"]
        assert not validated.details["success"] and validated.details["failed"] >= 4
        assert not _events(ws, "release.built")
    finally:
        os.environ.clear()
        os.environ.update(saved)
