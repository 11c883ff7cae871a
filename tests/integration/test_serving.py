"""The service for real: ``conveyor serve`` (BentoML) on 127.0.0.1 with a verified champion, and
canaries that raise, hang, skew, crash or break the output contract: each is rolled back and no
client sees an error. And the service as an attacker finds it: every path without a key, wrong
keys in floods, revoked keys, oversized, slow and malformed bodies."""

from __future__ import annotations

import collections
import json
import math
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conveyor.pipelines.training import run_training
from conveyor.registry.ledger import Ledger
from conveyor.registry.release import alias, promote
from conveyor.serving.auth import ApiKeys
from tests.conftest import POLICY_CODE, REPO, open_workspace
from tests.service import Reply, Service, drive, free_port

pytestmark = pytest.mark.slow
NAME = "loan-default"
FAULTS = {  # the canaries, by what is wrong with them (tests/faults.py)
    "raises": {"fault": "raise", "rate": 0.3},
    "slow": {"fault": "slow", "delay": 0.2},
    "skewed": {"fault": "skew"},
    "crashes": {"fault": "crash", "rate": 0.1},
    "breaks-contract": {"fault": "contract", "rate": 0.2},  # how: the breach file, per test
    "healthy": {"fault": "none"},
}
CANARY_POLICY = {
    "steps": [20, 50, 100],
    "min_requests": 60,
    "min_seconds": 1,
    "max_error_rate": 0.05,
    "latency": {"max_ratio": 3.0, "min_samples": 30},
    "predictions": {"max_psi": 0.5},
    "breach_limit": 2,
    "analysis_seconds": 0.5,
}
ANSWERED: list[Reply] = []  # every successful reply of the module, for the inference log's check


@dataclass
class Served:
    root: Path
    home: Path
    service: Service
    versions: dict[str, str]  # champion / fault name -> registered version
    client_key: str
    admin_key: str
    slow_key: str
    rows: list[dict]
    breach: Path  # how the contract-breaking canary breaks it (tests/faults.py)

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def status(self) -> dict:
        response = self.service.admin("GET", "status", self.admin_key)
        assert response.status_code == 200, response.text
        return response.json()

    def make_canary(self, version: str) -> dict:
        self.client().set_registered_model_alias(NAME, "canary", version)
        response = self.service.admin("POST", "reload", self.admin_key)
        assert response.status_code == 200, response.text
        return response.json()

    def ledger(self, kind: str) -> list:
        with Ledger(f"sqlite:///{self.home / 'ledger.db'}") as ledger:
            return [e for e in ledger.iter_events() if e.kind == kind]

    def drive(self, requests: int, **kwargs) -> list[Reply]:
        replies = drive(self.service.url, self.client_key, self.rows, requests=requests, **kwargs)
        ANSWERED.extend(r for r in replies if r.status == 200)
        return replies


def _rows(path: Path, columns: list[str], n: int = 500) -> list[dict]:
    frame = pd.read_csv(path, nrows=n)[columns]
    return [
        {
            k: (None if isinstance(v, float) and math.isnan(v) else (float(v) if isinstance(v, int | float) else v))
            for k, v in row.items()
        }
        for row in frame.to_dict("records")
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, small_loans: Path) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("serving")
    root, home = base / "project", base / "project" / ".conveyor"
    (root / "data").mkdir(parents=True)
    shutil.copytree(REPO / "policies", root / "policies", ignore=POLICY_CODE)
    shutil.copy(small_loans, root / "data" / "loans.csv")
    (root / "policies" / "canary.yaml").write_text(yaml.safe_dump(CANARY_POLICY))
    serving = yaml.safe_load((REPO / "policies" / "serving.yaml").read_text())
    serving.update(
        watch_seconds=3600,  # the tests reload by hand
        canary_timeout_ms=1000,
        rate_limit={"per_second": 100_000, "burst": 100_000},  # limits are tested with a key of their own
        header_timeout_seconds=2,
        body_timeout_seconds=2,
        unknown_categories="refuse",  # the default (the repository's policy flags them, for the demo)
    )
    (root / "policies" / "serving.yaml").write_text(yaml.safe_dump(serving))
    signing = yaml.safe_load((REPO / "policies" / "signing.yaml").read_text())
    signing["loadable_types"] = ["numpy.*", "scipy.*", "sklearn.*", "tests.faults.*"]  # the faulty canaries' class
    (root / "policies" / "signing.yaml").write_text(yaml.safe_dump(signing))
    promotion = yaml.safe_load((REPO / "policies" / "promotion.yaml").read_text())
    promotion["beat_champion"]["min_delta"] = -0.05  # the healthy canary is the champion's equal
    (root / "policies" / "promotion.yaml").write_text(yaml.safe_dump(promotion))
    config = (REPO / "conveyor.yaml").read_text()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    request = open_workspace(root, home, tracking_uri=uri, actor="trainer")

    versions = {}
    (root / "conveyor.yaml").write_text(config)
    versions["champion"] = run_training(request).version
    from mlflow import MlflowClient

    assert promote(request, f"{NAME}/{versions['champion']}", "champion").decision.ok
    project = yaml.safe_load(config)  # the canaries are trained against this champion, as in real life
    for name, params in FAULTS.items():
        project["estimator"] = {"class": "tests.faults.FaultyClassifier", "params": params}
        (root / "conveyor.yaml").write_text(yaml.safe_dump(project))
        versions[name] = run_training(request).version
    (root / "conveyor.yaml").write_text(config)
    client = MlflowClient(tracking_uri=uri)
    source = client.get_model_version(NAME, versions["champion"]).source  # the same files, registered by hand
    versions["unverified"] = str(client.create_model_version(NAME, source).version)

    keys = ApiKeys(home / "serving" / "api-keys.json")
    client_key, admin_key = keys.create("risk-app"), keys.create("ops", admin=True)
    slow_key = keys.create("batch-job", per_second=1, burst=2)
    columns = [c for group in (project["features"]["numeric"], project["features"]["categorical"]) for c in group]
    breach = base / "breach"
    breach.write_text("nan")
    service = Service(
        root / "conveyor.yaml", env={"CONVEYOR_TEST_FAULTS": "1", "CONVEYOR_TEST_BREACH_FILE": str(breach)}
    )
    service.start()
    try:
        yield Served(
            root, home, service, versions, client_key, admin_key, slow_key, _rows(small_loans, columns), breach
        )
    finally:
        service.stop()


def canary_gone(served: Served):
    return lambda: served.status()["canary"] is None


def test_champion_answers_with_its_version(served: Served) -> None:
    replies = served.drive(40)
    assert [r.status for r in replies] == [200] * 40
    assert {(r.body["version"], r.body["served_by"]) for r in replies} == {(served.versions["champion"], "champion")}
    assert all(0 <= r.body["predictions"][0] <= 1 for r in replies)


def test_a_batch_gets_one_prediction_per_row_in_order(served: Served) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {served.client_key}"}
    batch = httpx.post(f"{served.service.url}/predict", json={"rows": served.rows[:25]}, headers=headers).json()
    singles = [
        httpx.post(f"{served.service.url}/predict", json={"rows": [row]}, headers=headers).json()["predictions"][0]
        for row in served.rows[:25]
    ]
    assert batch["predictions"] == pytest.approx(singles)


def test_the_readme_request_runs_as_written(served: Served) -> None:
    import re

    import httpx

    readme = (REPO / "README.md").read_text()
    command = re.search(r"curl (.*?/predict) -d '(.*?)'", readme, re.S)
    assert command is not None, "the README shows a /predict request"
    body = json.loads(command.group(2))
    headers = {"Authorization": f"Bearer {served.client_key}", "Content-Type": "application/json"}
    reply = httpx.post(f"{served.service.url}/predict", json=body, headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["predictions"]) == len(body["rows"]) == 1


def test_callers_need_a_key_admins_an_admin_key_and_each_key_has_its_rate(served: Served) -> None:
    import httpx

    body = {"rows": served.rows[:1]}
    url = served.service.url
    assert httpx.post(f"{url}/predict", json=body).status_code == 401
    assert httpx.post(f"{url}/predict", json=body, headers={"Authorization": "Bearer cvk_not-a-key"}).status_code == 401
    assert served.service.admin("GET", "status", served.client_key).status_code == 403
    assert httpx.get(f"{url}/admin/status").status_code == 401
    answers = [
        httpx.post(f"{url}/predict", json=body, headers={"X-API-Key": served.slow_key}).status_code for _ in range(4)
    ]
    assert answers[:2] == [200, 200] and 429 in answers[2:]  # 1 request/s, burst 2
    assert httpx.get(f"{url}/livez").status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200


@pytest.mark.parametrize(
    "bad, field",
    [
        (lambda row: {"rows": [{**row, "age": "forty"}]}, "rows.0.age"),
        (lambda row: {"rows": [{**row, "credit_score": None, "region": 7}]}, "rows.0.region"),
        (lambda row: {"rows": [{k: v for k, v in row.items() if k != "purpose"}]}, "rows.0.purpose"),
        (lambda row: {"rows": [{**row, "backdoor": 1}]}, "rows.0.backdoor"),
        (lambda row: {"rows": []}, "rows"),
        (lambda row: {"rows": "all of them"}, "rows"),
        (lambda row: {"rows": [row] * 1001}, "rows"),
        (lambda row: {"rows": [row], "key": ["a"]}, "key"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(served: Served, bad, field: str) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {served.client_key}"}
    response = httpx.post(f"{served.service.url}/predict", json=bad(served.rows[0]), headers=headers)
    assert response.status_code == 400, response.text
    assert field in response.text or field.replace(".", '", "') in response.text, response.text


def test_a_version_that_does_not_verify_is_refused_and_service_goes_on(served: Served) -> None:
    version = served.versions["unverified"]
    status = served.make_canary(version)
    assert status["canary"] is None and status["refused"] == {"canary": version}
    refused = served.ledger("model.load_refused")
    assert refused[-1].details["version"] == version and "tags" in refused[-1].details["reason"]
    assert all(r.status == 200 and r.body["served_by"] == "champion" for r in served.drive(50))


@pytest.mark.parametrize(
    "fault, causes",
    [
        ("raises", ["errors"]),
        ("slow", ["latency", "errors"]),  # slower than the champion, or queued past the timeout
        ("skewed", ["PSI"]),
        ("crashes", ["errors"]),
    ],
)
def test_a_faulty_canary_is_rolled_back_and_no_client_sees_an_error(
    served: Served, fault: str, causes: list[str]
) -> None:
    version = served.versions[fault]
    status = served.make_canary(version)
    assert status["canary"]["version"] == version and status["analysis"]["state"] == "running"
    replies = served.drive(1500, stop=canary_gone(served))
    assert collections.Counter(r.status for r in replies) == {200: len(replies)}  # no client error at all
    status = served.status()
    assert status["canary"] is None and status["analysis"]["state"] == "rolled_back"
    assert alias(served.client(), NAME, "canary") is None  # the alias is gone: a restart will not bring it back
    event = served.ledger("model.canary_rolled_back")[-1]
    assert event.details["version"] == version and any(c in " ".join(event.details["reasons"]) for c in causes)
    assert len(replies) < 1500  # rolled back well before the end of the traffic


@pytest.mark.parametrize("breach", ["rows", "text", "nan", "inf", "outside", "classes"])
def test_a_canary_that_breaks_the_output_contract_is_rolled_back_and_no_client_sees_it(
    served: Served, breach: str
) -> None:
    served.breach.write_text(breach)
    version = served.versions["breaks-contract"]
    served.make_canary(version)
    replies = served.drive(1500, stop=canary_gone(served), check_every=25)
    assert collections.Counter(r.status for r in replies) == {200: len(replies)}
    predictions = [p for r in replies for p in r.body["predictions"]]
    assert all(math.isfinite(p) and 0 <= p <= 1 for p in predictions)  # only the champion's answers
    assert len(replies) < 600  # the first breach rolls it back
    event = served.ledger("model.canary_rolled_back")[-1]
    assert event.details["version"] == version and "broke the output contract" in " ".join(event.details["reasons"])
    assert alias(served.client(), NAME, "champion") == served.versions["champion"]  # never promoted


def test_a_category_the_model_never_saw_is_refused_naming_the_field_and_the_values(served: Served) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {served.client_key}"}
    row = {**served.rows[0], "home_ownership": "rent"}
    response = httpx.post(f"{served.service.url}/predict", json={"rows": [served.rows[1], row]}, headers=headers)
    assert response.status_code == 400
    assert "rows.1.home_ownership: 'rent'" in response.text and "did you mean 'RENT'" in response.text
    assert "'MORTGAGE', 'OTHER', 'OWN', 'RENT'" in response.text
    row = {**served.rows[0], "region": "atlantis"}
    response = httpx.post(f"{served.service.url}/predict", json={"rows": [row]}, headers=headers)
    assert response.status_code == 400 and "rows.0.region: 'atlantis'" in response.text


def test_routing_follows_the_weight_and_keys_stick(served: Served) -> None:
    version = served.versions["healthy"]
    served.make_canary(version)
    from typer.testing import CliRunner

    from conveyor.cli import app

    cli = ["canary", "set-weight", "30", "--hold", "--json", "--url", served.service.url, "--token", served.admin_key]
    moved = CliRunner().invoke(app, cli)  # as an operator's script moves it
    assert moved.exit_code == 0, moved.output
    status = json.loads(moved.stdout)
    assert status["canary"]["version"] == version and status["analysis"]["weight"] == 30
    replies = served.drive(1000, concurrency=16)
    share = sum(r.body["served_by"] == "canary" for r in replies) / len(replies)
    assert abs(share - 0.30) < 0.05, share  # 3 standard deviations of 1,000 draws at 30 %: 0.043
    keyed = served.drive(400, keys=[f"user-{i}" for i in range(40)])
    by_key = collections.defaultdict(set)
    for reply in keyed:
        by_key[reply.key].add(reply.body["served_by"])
    assert all(len(targets) == 1 for targets in by_key.values())  # each user stays with one model
    assert 0 < sum("canary" in t for t in by_key.values()) < 40
    assert served.status()["analysis"]["held"] is True


def test_a_healthy_canary_on_a_busy_machine_walks_the_steps_and_becomes_champion(served: Served) -> None:
    version = served.versions["healthy"]
    status = served.service.admin("POST", "weight", served.admin_key, {"weight": 20}).json()
    assert status["analysis"]["held"] is False
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a busy machine: one core burnt
    try:
        replies = served.drive(3000, stop=canary_gone(served))
    finally:
        neighbour.kill()
        neighbour.wait()
    assert all(r.status == 200 for r in replies)
    status = served.status()
    assert status["champion"]["version"] == version and status["canary"] is None, status
    completed = served.ledger("model.canary_completed")[-1]
    assert completed.details["version"] == version and completed.details["promoted"] is True
    assert served.ledger("model.promoted")[-1].details["version"] == version
    assert alias(served.client(), NAME, "champion") == version
    after = served.drive(20)
    assert {r.body["version"] for r in after} == {version}


def test_fuzzing_the_openapi_schema_finds_no_server_error(served: Served) -> None:
    import httpx
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    admin = {"Authorization": f"Bearer {served.admin_key}"}
    document = httpx.get(f"{served.service.url}/docs.json", headers=admin).json()
    operation = schemathesis.openapi.from_dict(document)["/predict"]["POST"]
    headers = {"Authorization": f"Bearer {served.client_key}"}
    statuses: collections.Counter[int] = collections.Counter()

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:
            response = case.call(base_url=served.service.url, headers=headers)
            statuses[response.status_code] += 1
            assert response.status_code < 500, (case.body, response.text)

        fuzz()
    assert sum(statuses.values()) >= 100 and all(s < 500 for s in statuses)


def test_metrics_count_requests_per_version_rollbacks_and_fallbacks(served: Served) -> None:
    import httpx

    refused = httpx.get(f"{served.service.url}/metrics")
    # 401; or 429 when this address has just sent its burst of wrong keys in an earlier test
    assert refused.status_code in (401, 429) and "key" in refused.json()["error"]
    headers = {"Authorization": f"Bearer {served.client_key}"}
    text = httpx.get(f"{served.service.url}/metrics", headers=headers).text
    assert (
        f'conveyor_predict_requests_total{{model="{NAME}",role="champion",version="{served.versions["champion"]}"}}'
        in text
    )
    rollbacks = len(served.ledger("model.canary_rolled_back"))
    assert f'conveyor_canary_rollbacks_total{{model="loan-default"}} {rollbacks:.1f}' in text
    fallbacks = next(line for line in text.splitlines() if line.startswith("conveyor_fallbacks_total"))
    assert float(fallbacks.split()[-1]) > 0
    assert "conveyor_predict_latency_seconds_bucket" in text and "conveyor_canary_weight" in text
    for counted in (
        'conveyor_contract_breaches_total{model="loan-default",role="canary"',
        "conveyor_model_load_refusals_total{",
    ):
        lines = [line for line in text.splitlines() if line.startswith(counted)]  # every series is there from 0
        assert sum(float(line.split()[-1]) for line in lines) > 0, lines


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus (Debian's package) is not installed")
def test_a_real_prometheus_scrapes_the_service_and_runs_every_dashboard_query_and_rule(
    served: Served, tmp_path: Path
) -> None:
    """Debian's Prometheus on 127.0.0.1 scrapes this service each second with a key; every query of
    the Grafana dashboard answers, the alert rules load and evaluate, and "who serves what" names
    the champion."""
    import json as jsonlib

    import httpx

    port = free_port()
    (tmp_path / "key").write_text(served.client_key)
    shutil.copy(REPO / "deploy" / "prometheus" / "alerts.yml", tmp_path)
    target = served.service.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {
                "job_name": "conveyor",
                "authorization": {"credentials_file": str(tmp_path / "key")},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (tmp_path / "prometheus.log").open("w") as log:
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list:
        body = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    try:
        deadline = time.monotonic() + 40
        serving: list = []
        while time.monotonic() < deadline:
            served.drive(20)
            try:
                serving = query('conveyor_serving_info{role="champion"} == 1')
                if serving and query("rate(conveyor_predict_requests_total[5s]) > 0"):
                    break
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(1)
        assert serving, (tmp_path / "prometheus.log").read_text()[-2000:]
        champion = served.status()["champion"]["version"]  # earlier tests may have promoted a canary
        assert {(s["metric"]["model"], s["metric"]["version"]) for s in serving} == {(NAME, champion)}
        dashboard = jsonlib.loads((REPO / "deploy" / "grafana" / "conveyor.json").read_text())
        answered = 0
        for panel in dashboard["panels"]:
            for target_ in panel["targets"]:
                expr = target_["expr"].replace("$__rate_interval", "5s").replace("$model", ".*")
                answered += bool(query(expr))
        assert answered >= 8  # the tabular panels have data (the LLM ones stay empty on this service)
        rules = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        health = {rule["name"]: rule["health"] for group in rules for rule in group["rules"]}
        written = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]
        assert len(health) == sum(len(group["rules"]) for group in written) == 15, health
        assert set(health.values()) <= {"ok", "unknown"}, health
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=20)


def _raw(served: Served, head: bytes, body: bytes = b"", *, wait: float = 10) -> tuple[bytes, float]:
    """Send ``head`` and ``body`` over a plain socket; what comes back before the server closes or ``wait``
    passes, and how long that took."""
    with socket.create_connection(("127.0.0.1", served.service.port)) as conn:
        started = time.monotonic()
        try:
            conn.sendall(head)
            for at in range(0, len(body), 1 << 20):
                conn.sendall(body[at : at + (1 << 20)])
        except OSError:
            pass  # the server answered and closed before the whole body was sent: as intended
        conn.settimeout(wait)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except (TimeoutError, OSError):
            pass
        return received, time.monotonic() - started


def _workers(served: Served) -> list:
    import psutil

    tree = psutil.Process(served.service.process.pid).children(recursive=True)
    return [p for p in tree if "_bentoml_impl.worker" in " ".join(p.cmdline())]


def test_every_path_without_a_key_is_refused_but_the_probes_and_nothing_serves_a_script(served: Served) -> None:
    import httpx

    url = served.service.url
    paths = ["/", "/docs", "/docs.json", "/schema.json", "/metrics", "/predict", "/admin/status", "/admin/docs"]
    paths += ["/admin/openapi.json", "/admin/reload", "/admin/abort", "/static_content/index.css", "/assets/a.js"]
    paths += ["/livez", "/readyz", "/healthz", "/v1/models", "/predict/../admin/status"]
    answered = {}
    for path in paths:
        for method in ("GET", "POST", "OPTIONS"):
            response = httpx.request(method, url + path)
            answered[(method, path)] = response.status_code
            assert "<script" not in response.text and "googletagmanager" not in response.text
    assert {k for k, status in answered.items() if status < 400} == {("GET", "/livez"), ("GET", "/readyz")}
    assert set(answered.values()) <= {200, 401, 404, 405, 429}  # 429: this address has sent many wrong keys
    predict = {"Authorization": f"Bearer {served.client_key}"}
    admin = {"Authorization": f"Bearer {served.admin_key}"}
    assert httpx.get(f"{url}/docs.json", headers=predict).status_code == 403
    assert set(httpx.get(f"{url}/docs.json", headers=admin).json()["paths"]) == {"/predict"}
    for path in ("/", "/docs", "/admin/docs", "/admin/openapi.json", "/schema.json", "/static_content/index.html"):
        response = httpx.get(url + path, headers=admin)
        assert response.status_code == 404 and "<script" not in response.text, path


def test_bodies_that_are_not_json_are_415_and_broken_json_400(served: Served) -> None:
    import httpx

    url, headers = f"{served.service.url}/predict", {"Authorization": f"Bearer {served.client_key}"}
    assert httpx.post(url, files={"rows": b"[]"}, headers=headers).status_code == 415
    assert httpx.post(url, content=b"rows", headers={**headers, "Content-Type": "text/plain"}).status_code == 415
    assert httpx.post(url, content=b"{}", headers=headers).status_code == 415  # no content type at all
    broken = httpx.post(url, content=b'{"rows": [', headers={**headers, "Content-Type": "application/json"})
    assert broken.status_code == 400 and "invalid request" in broken.json()["error"]


def test_oversized_bodies_get_413_unread_and_memory_stays_bounded(served: Served) -> None:
    big = 50_000_000
    before = sum(p.memory_info().rss for p in _workers(served))
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {big}\r\n\r\n"
    received, took = _raw(served, head.encode())  # no body sent at all: the answer comes from the head
    assert received.startswith(b"HTTP/1.1 413") and took < 2
    body = b"[" * big
    for _ in range(5):  # without a key, the whole 50 MB sent: 413 and the connection closed
        received, _ = _raw(served, head.encode(), body)
        assert received.startswith(b"HTTP/1.1 413")
    key = f"Authorization: Bearer {served.client_key}\r\n"
    chunked = f"POST /predict HTTP/1.1\r\nHost: x\r\n{key}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"x" * 100_000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(30)) + b"0\r\n\r\n"
    received, _ = _raw(served, chunked.encode(), chunks)  # no length declared, with a key: cut at the limit
    assert received.startswith(b"HTTP/1.1 413")
    after = sum(p.memory_info().rss for p in _workers(served))
    assert after - before < 50_000_000, (before, after)


def test_slow_clients_are_disconnected_and_a_dropped_client_is_one_line_of_log(served: Served) -> None:
    received, took = _raw(served, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty")  # a head never finished
    assert received == b"" and 1.5 < took < 6
    key = f"Authorization: Bearer {served.client_key}\r\n".encode()
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\n"
        + key
        + b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    )
    received, took = _raw(served, head, b'{"rows": [')  # a body never finished
    assert received.startswith(b"HTTP/1.1 408") and 1.5 < took < 6
    with socket.create_connection(("127.0.0.1", served.service.port)) as conn:
        conn.sendall(head + b'{"ro')  # and a client that gives up halfway
    time.sleep(0.5)
    text = served.service.log.read_text()
    assert "disconnected before its request was read" in text and "Traceback" not in text


def test_a_flood_of_wrong_keys_leaves_valid_traffic_at_least_half_its_throughput(served: Served) -> None:
    import asyncio
    import threading

    import httpx

    def valid_rate() -> float:
        started = time.perf_counter()
        replies = served.drive(400, concurrency=8)
        assert all(r.status == 200 for r in replies)
        return len(replies) / (time.perf_counter() - started)

    alone = valid_rate()
    stop, statuses = threading.Event(), collections.Counter()

    def flood() -> None:
        async def run() -> None:
            async with httpx.AsyncClient(base_url=served.service.url, timeout=30) as client:

                async def one(i: int) -> None:
                    wrong = served.client_key[:12] + f"{i:040d}"  # a real key id, a wrong key
                    response = await client.post("/predict", json={"rows": []}, headers={"X-API-Key": wrong})
                    statuses[response.status_code] += 1

                sent = 0
                while not stop.is_set() and sent < 20_000:
                    await asyncio.gather(*(one(sent + i) for i in range(8)))
                    sent += 8

        asyncio.run(run())

    attacker = threading.Thread(target=flood)
    attacker.start()
    try:
        time.sleep(0.5)
        flooded = valid_rate()
    finally:
        stop.set()
        attacker.join(60)
    assert set(statuses) <= {401, 429} and statuses[429] > 0  # the address is limited after its burst
    assert flooded >= 0.5 * alone, (alone, flooded, statuses)


def test_a_revoked_key_is_refused_within_a_second(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx
    from typer.testing import CliRunner

    from conveyor.cli import app

    keys = ApiKeys(served.home / "serving" / "api-keys.json")
    predict, admin = keys.create("short-lived"), keys.create("short-lived-ops", admin=True)
    url = served.service.url

    def allowed() -> tuple[bool, bool]:
        one = httpx.post(f"{url}/predict", json={"rows": served.rows[:1]}, headers={"X-API-Key": predict})
        two = httpx.get(f"{url}/admin/status", headers={"X-API-Key": admin})
        return one.status_code == 200, two.status_code == 200

    time.sleep(0.5)
    assert allowed() == (True, True)  # used, and so cached, if anything caches
    monkeypatch.setenv("CONVEYOR_HOME", str(served.home))
    for name in ("short-lived", "short-lived-ops"):
        result = CliRunner().invoke(app, ["--config", str(served.root / "conveyor.yaml"), "api-key", "revoke", name])
        assert result.exit_code == 0 and "Revoked 1 key" in result.stdout, result.stdout
    revoked = time.monotonic()
    while allowed() != (False, False):
        assert time.monotonic() - revoked < 1.0, "a revoked key still works after a second"
        time.sleep(0.05)


def test_a_graceful_stop_leaves_every_answer_in_the_inference_log(served: Served) -> None:
    from conveyor.registry.inference_log import read_log

    assert served.service.stop() == 0
    log = read_log(served.home / "inference" / NAME)
    expected = {r.body["request_id"] for r in ANSWERED}
    assert len(expected) > 1000 and set(log["request_id"]) >= expected
    answered = {r.body["request_id"]: r.body for r in ANSWERED}
    sample = log[log["request_id"].isin(list(answered)[:50])]
    for row in sample.itertuples():
        assert answered[row.request_id]["version"] == row.version and answered[row.request_id]["predictions"][
            0
        ] == pytest.approx(row.prediction)
    assert not list((served.home / "inference").rglob("*.partial"))


def test_a_request_id_leads_to_the_deployment_and_the_model_that_answered_it(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the stop above, every answer is in the log: an auditor starts from a request id, or a time."""
    import json

    monkeypatch.setenv("CONVEYOR_HOME", str(served.home))

    from typer.testing import CliRunner

    from conveyor.cli import app

    def lineage(*args: str) -> dict:
        result = CliRunner().invoke(
            app, ["--config", str(served.root / "conveyor.yaml"), "lineage", *args, "--up", "--json"]
        )
        assert result.exit_code == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    by_role = {r.body["served_by"]: r.body for r in ANSWERED}
    assert {"champion", "canary"} <= set(by_role)
    deployments = {e.outputs[0]: e for e in served.ledger("model.deployed")}
    for role, body in by_role.items():
        found = lineage(f"request:{body['request_id']}")
        deployed = deployments[found["digests"][0]]
        assert deployed.details["version"] == body["version"] and deployed.details["role"] == role
        registered = [e for e in found["upstream"]["events"] if e["kind"] == "model.registered"]
        assert [e["details"]["version"] for e in registered] == [body["version"]]
        assert {"model.signed", "model.trained", "features.built", "data.validated", "dataset.versioned"} <= {
            e["kind"] for e in found["upstream"]["events"]
        }
        by_number = lineage(f"deployment:{deployed.seq}")
        assert by_number["digests"] == found["digests"] and by_number["upstream"] == found["upstream"]
    newest = max(deployments.values(), key=lambda e: e.seq)
    at = lineage("--at", newest.time)
    champion = [deployments[d] for d in at["digests"] if deployments[d].details["role"] == "champion"]
    assert len(champion) == 1 and champion[0].seq == max(
        e.seq for e in deployments.values() if e.details["role"] == "champion"
    )


def test_two_workers_share_one_canary_analysis_and_log_every_answer_once(served: Served) -> None:
    """After the stops above: the same project served by two workers."""
    from conveyor.registry.inference_log import read_log

    policy = served.root / "policies" / "serving.yaml"
    policy.write_text(policy.read_text() + "\nworkers: 2\n")
    service = Service(served.root / "conveyor.yaml", env={"CONVEYOR_TEST_FAULTS": "1"})
    service.start()
    try:
        served.service = service
        champion = served.status()["champion"]["version"]
        # A healthy canary that is not the champion (the healthy one may have been promoted above).
        healthy = served.versions["healthy"] if champion != served.versions["healthy"] else served.versions["champion"]
        served.make_canary(healthy)
        assert service.admin("POST", "weight", served.admin_key, {"weight": 40, "hold": True}).status_code == 200
        deadline = time.monotonic() + 60
        while not all(served.status()["canary"] is not None for _ in range(8)):  # both workers have loaded it
            assert time.monotonic() < deadline, "a worker never loaded the canary"
            time.sleep(0.2)
        replies: list = []
        for _ in range(4):  # a connection each, so both workers get some; the kernel decides which, so more if not
            replies += served.drive(400, concurrency=16, keepalive=False)
            time.sleep(0.5)  # every worker flushes its observations five times a second
            analysis = served.status()["analysis"]  # whichever worker answers: the shared view
            if len(analysis["canary_requests_by_worker"]) == 2:
                break
        assert all(r.status == 200 for r in replies)
        served_by_canary = sum(r.body["served_by"] == "canary" for r in replies)
        assert analysis["canary_requests"] == served_by_canary > 100  # one analysis over all traffic
        assert len(analysis["canary_requests_by_worker"]) == 2
        assert service.admin("POST", "abort", served.admin_key, {"reason": "test"}).status_code == 200
        deadline = time.monotonic() + 5
        while not all(served.status()["canary"] is None for _ in range(8)):  # every worker dropped it
            assert time.monotonic() < deadline, "a worker still serves the aborted canary"
            time.sleep(0.1)
        ids = {r.body["request_id"] for r in replies}
    finally:
        assert service.stop() == 0
    log = read_log(served.home / "inference" / NAME)
    ours = log[log["request_id"].isin(ids)]
    assert set(ours["request_id"]) == ids and not ours.duplicated(["request_id", "row"]).any()
    deployed = {e.outputs[0]: e for e in served.ledger("model.deployed")}
    workers = {deployed[d].details["instance"] for d in ours[ours["version"] == champion]["deployment"]}
    assert len(workers) == 2  # both workers answered, each logged its own
