"""Auditing a model version end to end on real stores: every link, every tamper case, evidence offline."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.pipelines.training import run_training
from conveyor.registry.digests import file_digest
from conveyor.registry.ledger import Ledger, event_hash
from tests.browser import chromium
from tests.conftest import POLICY_CODE, REPO, open_workspace, postgres_database

NAME = "loan-default"
runner = CliRunner()
LINKS = [
    "chain",
    "registry",
    "files",
    "signature",
    "provenance",
    "tags",
    "ledger",
    "data",
    "validation",
    "features",
    "training",
    "materials",
    "releases",
    "reports",
]


@dataclass(frozen=True)
class Project:
    root: Path
    home: Path

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.home / 'ledger.db'}"

    def cli(self, *args: str):
        return runner.invoke(app, ["--config", str(self.root / "conveyor.yaml"), *args])

    def audit(self, ref: str = f"{NAME}/1") -> tuple[int, dict[str, dict]]:
        result = self.cli("audit", ref, "--json")
        body = json.loads(result.stdout)
        return result.exit_code, {link["name"]: link for link in body["links"]}

    def sql(self, statement: str, *params: object) -> None:
        with sqlite3.connect(self.home / "ledger.db") as db:
            db.execute(statement, params)

    def events(self, kind: str) -> list:
        with Ledger(self.ledger_url) as ledger:
            return [e for e in ledger.iter_events() if e.kind == kind]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_loans: Path) -> Project:
    """Two versions trained from DVC-tracked data, version 1 promoted to champion."""
    base = tmp_path_factory.mktemp("audit")
    root, home = base / "project", base / "project" / ".conveyor"
    (root / "data").mkdir(parents=True)
    shutil.copytree(REPO / "policies", root / "policies", ignore=POLICY_CODE)
    shutil.copy(REPO / "conveyor.yaml", root / "conveyor.yaml")
    shutil.copy(small_loans, root / "data" / "loans.csv")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=root, check=True, env=env)
    subprocess.run([*dvc, "add", "-q", "data/loans.csv"], cwd=root, check=True, env=env)
    project = Project(root, home)
    request = open_workspace(root, home, ledger_url=project.ledger_url, actor="trainer")
    run_training(request)
    run_training(request)
    os.environ["CONVEYOR_HOME"] = str(home)
    assert project.cli("promote", f"{NAME}/1", "--to", "champion").exit_code == 0
    return project


@pytest.fixture
def project(trained: Project, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """The trained project; the ledger, data and reports are put back after each test."""
    monkeypatch.setenv("CONVEYOR_HOME", str(trained.home))
    data = trained.root / "data" / "loans.csv"
    saved_data, saved_ledger = data.read_bytes(), sqlite3.connect(":memory:")
    with sqlite3.connect(trained.home / "ledger.db") as ledger:
        ledger.backup(saved_ledger)
    yield trained
    data.write_bytes(saved_data)
    with sqlite3.connect(trained.home / "ledger.db") as ledger:
        saved_ledger.backup(ledger)
    saved_ledger.close()


def test_an_intact_version_passes_every_link(project: Project) -> None:
    code, links = project.audit()
    assert code == 0, [link for link in links.values() if not link["ok"]]
    assert list(links) == LINKS and all(link["ok"] for link in links.values())
    assert "tracked by DVC, record agrees" in links["data"]["detail"]
    assert "promoted" in links["releases"]["detail"]
    text = project.cli("audit", f"{NAME}@champion")
    assert text.exit_code == 0 and text.stdout.splitlines()[-1].startswith(f"{NAME} version 1: every link verified")


def _edit_row(p: Project) -> None:
    p.sql(
        "UPDATE ledger_events SET details = replace(details, '\"train_rows\":', '\"train_rows\":1') WHERE kind = 'model.trained'"
    )


def _delete_row(p: Project) -> None:
    p.sql("DELETE FROM ledger_events WHERE seq = (SELECT min(seq) FROM ledger_events WHERE kind = 'model.evaluated')")


def _reorder_rows(p: Project) -> None:
    with sqlite3.connect(p.home / "ledger.db") as db:
        rows = db.execute(
            "SELECT seq, kind, actor, time, inputs, outputs, details FROM ledger_events WHERE seq IN (3, 4)"
        ).fetchall()
        for (seq, *_), (_, *content) in zip(rows, reversed(rows), strict=True):
            db.execute(
                "UPDATE ledger_events SET kind=?, actor=?, time=?, inputs=?, outputs=?, details=? WHERE seq=?",
                (*content, seq),
            )


def _replace_report(p: Project) -> None:
    report = Path(p.events("data.validated")[0].details["report"])
    report.write_text(
        report.read_text().replace('"success": true', '"success": false').replace('"success":true', '"success":false')
        + " "
    )


def _swap_bundle(p: Project) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{p.home / 'mlflow.db'}")

    def folder(version: str) -> Path:
        model_id = client.get_model_version(NAME, version).source.split("/")[-1]
        return Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))

    target = folder("1") / "conveyor" / "model.sig"
    original = target.read_bytes()
    shutil.copyfile(folder("2") / "conveyor" / "model.sig", target)
    _RESTORE.append((target, original))


def _edit_data(p: Project) -> None:
    with (p.root / "data" / "loans.csv").open("a") as data:
        data.write("\n")


_RESTORE: list[tuple[Path, bytes]] = []


@pytest.mark.parametrize(
    ("tamper", "link", "says"),
    [
        (_edit_row, "chain", "no longer matches its hash"),
        (_delete_row, "chain", "is missing"),
        (_reorder_rows, "chain", "no longer matches its hash"),
        (_replace_report, "reports", "which the event did not record"),
        (_swap_bundle, "signature", "no trusted key verifies the signature"),
        (_edit_data, "data", "the data was changed"),
    ],
    ids=[
        "edit-ledger-row",
        "delete-ledger-row",
        "reorder-ledger-rows",
        "replace-report",
        "swap-bundle",
        "edit-dvc-data",
    ],
)
def test_tampering_fails_the_audit_naming_the_link(project: Project, tamper, link: str, says: str) -> None:
    report = Path(project.events("data.validated")[0].details["report"])
    saved_report = report.read_bytes()
    try:
        tamper(project)
        code, links = project.audit()
        assert code == 1
        assert links[link]["ok"] is False and says in links[link]["detail"], links[link]
        result = project.cli("audit", f"{NAME}/1")
        assert f"FAIL  {link}" in result.stdout and "NOT verified" in result.stdout
    finally:
        report.write_bytes(saved_report)
        while _RESTORE:
            path, content = _RESTORE.pop()
            path.write_bytes(content)


def test_a_sealed_chain_is_checked_stretch_by_stretch_and_a_rewritten_one_is_caught(project: Project) -> None:
    sealed = project.cli("audit", "--ledger", "--seal")
    assert sealed.exit_code == 0 and "Sealed at event" in sealed.stdout
    code, links = project.audit()
    assert code == 0 and "against the seal of" in links["chain"]["detail"]

    # A careful forger edits an event and recomputes every hash after it: the chain is
    # self-consistent again, but no longer the one the seal signed.
    with Ledger(project.ledger_url) as ledger:
        events = list(ledger.iter_events())
    target = next(e for e in events if e.kind == "model.trained")
    prev = events[target.seq - 2].hash
    with sqlite3.connect(project.home / "ledger.db") as db:
        for event in events[target.seq - 1 :]:
            details = {**event.details, "train_rows": 1} if event.seq == target.seq else event.details
            digest = event_hash(
                event.seq, event.kind, event.actor, event.time, event.inputs, event.outputs, details, prev, event.roles
            )
            db.execute(
                "UPDATE ledger_events SET details=?, prev_hash=?, hash=? WHERE seq=?",
                (json.dumps(details, sort_keys=True, separators=(",", ":")), prev, digest, event.seq),
            )
            prev = digest
        db.execute("UPDATE ledger_head SET hash=? WHERE id=1", (prev,))
    # The chain alone cannot tell; the ledger's audit holds it to the seal, which can.
    held = project.cli("audit", "--ledger")
    assert held.exit_code == 1 and "signed event(s)" in held.stderr and "with another hash: rewritten" in held.stderr
    code, links = project.audit()
    assert code == 1 and "no longer has the hash the seal recorded" in links["chain"]["detail"]


def test_a_seal_signed_by_an_unknown_key_is_itself_a_failure(project: Project, tmp_path: Path) -> None:
    from conveyor.registry.keys import load_or_create_key
    from conveyor.registry.seals import seal_ledger

    stranger = load_or_create_key(tmp_path / "stranger")
    with Ledger(project.ledger_url) as ledger:
        seal_ledger(
            ledger,
            stranger.private_key(),
            stranger.fingerprint,
            {stranger.fingerprint: stranger.public_path.read_bytes()},
        )
    code, links = project.audit()
    assert code == 1 and "not signed by a trusted key" in links["chain"]["detail"]


def test_the_evidence_bundle_verifies_offline_and_catches_a_changed_file(project: Project, tmp_path: Path) -> None:
    bundle = tmp_path / "evidence.tar.gz"
    exported = project.cli("audit", f"{NAME}/1", "--export", str(bundle))
    assert exported.exit_code == 0 and bundle.is_file(), exported.stdout
    fingerprint = exported.stdout.split("--fingerprint ")[1].split(")")[0]

    # Offline: another folder, no project, no Conveyor settings, no registry or ledger.
    elsewhere = tmp_path / "auditor"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "MLFLOW_"))}

    def verify(path: Path, pin: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "conveyor", "audit", "--bundle", str(path), "--fingerprint", pin, "--json"]
        return subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)

    good = verify(bundle, fingerprint)
    body = json.loads(good.stdout)
    assert good.returncode == 0 and body["ok"], good.stdout
    names = [link["name"] for link in body["links"]]
    assert {"manifest", "files", "chain", "signature", "provenance", "materials", "reports"} <= set(names)
    assert not list(elsewhere.iterdir())  # verification wrote nothing where it ran

    wrong_key = verify(bundle, "sha256:" + "0" * 64)
    assert wrong_key.returncode == 1 and "not the pinned" in wrong_key.stdout

    with tarfile.open(bundle) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    report = next((tmp_path / "unpacked" / "evidence" / "reports").glob("*.json"))
    report.write_text(report.read_text() + " ")
    changed = tmp_path / "changed.tar.gz"
    with tarfile.open(changed, "w:gz") as archive:
        archive.add(tmp_path / "unpacked" / "evidence", arcname="evidence")
    bad = verify(changed, fingerprint)
    links = {link["name"]: link for link in json.loads(bad.stdout)["links"]}
    assert bad.returncode == 1 and not links["files"]["ok"] and "was changed" in links["files"]["detail"]


def test_lineage_starts_from_a_file_a_digest_a_version_an_alias_and_an_event(project: Project) -> None:
    data = project.root / "data" / "loans.csv"
    registered = project.events("model.registered")[0]
    version_digest = registered.outputs[0]

    def query(*args: str) -> dict:
        result = project.cli("lineage", *args, "--json")
        assert result.exit_code == 0, result.stdout
        return json.loads(result.stdout)

    def kinds(walk: dict) -> set[str]:
        return {e["kind"] for e in walk["events"]}

    down = query(str(data), "--down")
    assert down["digests"] == [file_digest(data)] and {"data.validated", "model.trained", "model.registered"} <= kinds(
        down["downstream"]
    )
    assert query(file_digest(data), "--down")["downstream"] == down["downstream"]
    up = query(f"{NAME}/1", "--up")
    assert up["digests"] == [version_digest]
    assert {
        "dataset.versioned",
        "data.validated",
        "features.built",
        "model.trained",
        "model.signed",
        "model.registered",
    } <= kinds(up["upstream"])
    assert query(f"{NAME}@champion", "--up")["digests"] == [version_digest]
    shallow = query(f"{NAME}/1", "--up", "--depth", "1")
    assert kinds(shallow["upstream"]) == {"model.registered"} and shallow["upstream"]["truncated"] is True
    event = query(f"event:{registered.seq}", "--up")
    assert "model.trained" in kinds(event["upstream"])
    text = project.cli("lineage", f"{NAME}/1", "--up")
    assert "Where it came from" in text.stdout and "dataset.versioned" in text.stdout


def test_lineage_from_something_unknown_is_a_clear_error(project: Project) -> None:
    for target, says in [
        ("not-a-thing", "is neither a file here nor anything else the ledger can be asked about"),
        ("sha256:" + "ab" * 32, "The ledger has no event that names"),
        ("deployment:1", "is a dataset.versioned, not a deployment"),
    ]:
        result = project.cli("lineage", target)
        assert result.exit_code != 0 and says in result.stderr + result.stdout
        assert "Traceback" not in result.stderr + result.stdout
    bad_time = project.cli("lineage", "--at", "yesterday")
    assert bad_time.exit_code == 1 and "is not a time" in bad_time.stderr
    assert "No deployment is recorded" in project.cli("lineage", "--at", "2026-01-01").stderr


def test_the_html_page_fits_the_screen_starts_from_the_version_and_shows_the_audit(
    project: Project, tmp_path: Path
) -> None:
    page = tmp_path / "lineage.html"
    result = project.cli("lineage", f"{NAME}/1", "--html", str(page))
    assert result.exit_code == 0 and page.is_file()
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    assert f"<title>Lineage of {NAME} version 1</title>" in text
    dom = chromium(page, tmp_path)
    assert 'data-fits="true"' in dom, "the page is no wider than a 1280 px screen"
    graph = json.loads(project.cli("lineage", f"{NAME}/1", "--json").stdout)
    events = {e["seq"] for w in ("upstream", "downstream") for e in graph[w]["events"]}
    cards = re.findall(r'<article class="card (event|artifact)( start)?" id="([^"]+)" data-kind="([^"]+)"', dom)
    assert cards[0][1] == " start" and cards[0][3] == "registered version", "the start node comes first"
    assert sum(1 for c in cards if c[0] == "event") == len(events) and sum(1 for c in cards if c[1]) == 1
    for kind in ("dataset.versioned", "data.validated", "model.trained", "model.registered", "model.promoted"):
        assert f'data-kind="{kind}"' in dom
    assert re.search(r'<p class="verdict ok">Audit: (\d+) of \1 links of loan-default version 1 verified', dom)
    assert "event: a recorded step" in dom and "where this page starts" in dom  # the legend
    # the details are in the page, not in tooltips: the training event's run id and rows are printed
    trained = next(e for w in ("upstream", "downstream") for e in graph[w]["events"] if e["kind"] == "model.trained")
    assert f"<dd>{trained['details']['run_id']}</dd>" in dom
    layers = re.findall(r'<details class="layer" data-step="(\d+)"( open)?>', dom)
    assert layers and all(bool(opened) == (int(step) < 3) for step, opened in layers), "near layers open, far closed"
    printed = tmp_path / "lineage.pdf"
    chromium(page, tmp_path, f"--print-to-pdf={printed}")
    assert printed.read_bytes()[:5] == b"%PDF-" and printed.stat().st_size > 20_000  # it prints, every layer open


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Collector.received.append(json.loads(body))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_openlineage_events_are_written_and_posted(project: Project, tmp_path: Path) -> None:
    with Ledger(project.ledger_url) as ledger:
        events = list(ledger.iter_events())
    out = tmp_path / "lineage.jsonl"
    assert project.cli("export", "openlineage", "-o", str(out)).exit_code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(events) and len({line["run"]["runId"] for line in lines}) == len(events)
    for line, event in zip(lines, events, strict=True):
        assert line["job"]["name"] == event.kind and line["eventType"] in ("COMPLETE", "FAIL")
        assert [d["name"] for d in line["inputs"]] == list(event.inputs) and [
            d["name"] for d in line["outputs"]
        ] == list(event.outputs)
        assert line["run"]["facets"]["conveyor"]["hash"] == event.hash

    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _Collector.received.clear()
        sent = project.cli("export", "openlineage", "--url", f"http://127.0.0.1:{server.server_port}")
        assert sent.exit_code == 0, sent.stdout
        assert [r["run"]["runId"] for r in _Collector.received] == [line["run"]["runId"] for line in lines]
    finally:
        server.shutdown()
        server.server_close()
    refused = project.cli("export", "openlineage", "--url", f"http://127.0.0.1:{server.server_port}")
    assert refused.exit_code == 1 and "did not answer" in refused.stderr


def test_intoto_statements_are_exported_as_they_are(project: Project, tmp_path: Path) -> None:
    out = tmp_path / "intoto"
    result = project.cli("export", "intoto", NAME, "-o", str(out))
    assert result.exit_code == 0, result.stdout + result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        f"{NAME}-{v}.{kind}" for v in ("1", "2") for kind in ("model-signature.sigstore.json", "provenance.dsse.json")
    ]
    signed = {e.details["signer"] for e in project.events("model.signed")}
    provenance = [e.outputs[1] for e in project.events("model.signed")]
    assert [file_digest(out / f"{NAME}-{v}.provenance.dsse.json") for v in ("1", "2")] == provenance and len(
        signed
    ) == 1


def test_the_audit_runs_the_same_on_a_postgresql_ledger(
    tmp_path: Path, small_loans: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training, promotion and the audit against a ledger on PostgreSQL; an edited row is named there too."""
    import sqlalchemy as sa

    with postgres_database("audit") as url:
        root, home = tmp_path / "project", tmp_path / "project" / ".conveyor"
        (root / "data").mkdir(parents=True)
        shutil.copytree(REPO / "policies", root / "policies", ignore=POLICY_CODE)
        shutil.copy(REPO / "conveyor.yaml", root / "conveyor.yaml")
        shutil.copy(small_loans, root / "data" / "loans.csv")
        run_training(open_workspace(root, home, ledger_url=url, actor="trainer"))
        monkeypatch.setenv("CONVEYOR_HOME", str(home))
        monkeypatch.setenv("CONVEYOR_LEDGER_URL", url)
        project = Project(root, home)
        assert project.cli("promote", f"{NAME}/1", "--to", "champion").exit_code == 0
        assert project.cli("audit", "--ledger", "--seal").exit_code == 0
        code, links = project.audit()
        assert code == 0 and "against the seal of" in links["chain"]["detail"], [
            link for link in links.values() if not link["ok"]
        ]
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE ledger_events SET details = replace(details, :old, :new) WHERE kind = 'model.trained'"),
                {"old": '"train_rows":', "new": '"train_rows":1'},
            )
        engine.dispose()
        code, links = project.audit()
        assert code == 1 and not links["chain"]["ok"] and "no longer matches its hash" in links["chain"]["detail"]
