"""The service for real: ``conveyor serve`` (BentoML) on 127.0.0.1 with a verified champion, and
canaries that raise, hang, skew or crash: each is rolled back and no client sees an error."""

from __future__ import annotations

import collections
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines.training import run_training
from registry.ledger import Ledger
from registry.release import alias, promote
from serving.auth import ApiKeys
from tests.conftest import POLICY_CODE, REPO, open_workspace
from tests.service import Reply, Service, drive

pytestmark = pytest.mark.slow
NAME = "loan-default"
FAULTS = {  # the canaries, by what is wrong with them (tests/faults.py)
    "raises": {"fault": "raise", "rate": 0.3},
    "slow": {"fault": "slow", "delay": 0.2},
    "skewed": {"fault": "skew"},
    "crashes": {"fault": "crash", "rate": 0.1},
    "healthy": {"fault": "none"},
}
CANARY_POLICY = {
    "steps": [20, 50, 100],
    "min_requests": 60,
    "min_seconds": 1,
    "max_error_rate": 0.05,
    "latency": {"percentile": "p95", "max_ratio": 3.0},
    "max_psi": 0.5,
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
        watch_seconds=3600,
        canary_timeout_ms=1000,  # the tests reload by hand
        rate_limit={"per_second": 100_000, "burst": 100_000},
    )  # limits are tested with a key of its own
    (root / "policies" / "serving.yaml").write_text(yaml.safe_dump(serving))
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
    service = Service(root / "conveyor.yaml", env={"CONVEYOR_TEST_FAULTS": "1"})
    service.start()
    try:
        yield Served(root, home, service, versions, client_key, admin_key, slow_key, _rows(small_loans, columns))
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


def test_routing_follows_the_weight_and_keys_stick(served: Served) -> None:
    version = served.versions["healthy"]
    served.make_canary(version)
    assert served.service.admin("POST", "weight", served.admin_key, {"weight": 30, "hold": True}).status_code == 200
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


def test_a_healthy_canary_walks_the_steps_and_becomes_champion(served: Served) -> None:
    version = served.versions["healthy"]
    status = served.service.admin("POST", "weight", served.admin_key, {"weight": 20}).json()
    assert status["analysis"]["held"] is False
    replies = served.drive(3000, stop=canary_gone(served))
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

    document = httpx.get(f"{served.service.url}/docs.json").json()
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

    text = httpx.get(f"{served.service.url}/metrics").text
    assert (
        f'conveyor_predict_requests_total{{model="{NAME}",role="champion",version="{served.versions["champion"]}"}}'
        in text
    )
    assert 'conveyor_canary_rollbacks_total{model="loan-default"} 4.0' in text
    fallbacks = next(line for line in text.splitlines() if line.startswith("conveyor_fallbacks_total"))
    assert float(fallbacks.split()[-1]) > 0
    assert "conveyor_predict_latency_seconds_bucket" in text and "conveyor_canary_weight_percent" in text
    assert "conveyor_model_load_refusals_total" in text


def test_a_graceful_stop_leaves_every_answer_in_the_inference_log(served: Served) -> None:
    from registry.inference_log import read_log

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
