"""The tabular front end and its serving core without HTTP: who may call, what it answers with no champion, the admin verbs'
refusals, and that a registry with no champion leaves it not ready but answering clearly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from conveyor.policies.errors import RequestRefused
from conveyor.registry.workspace import Workspace
from conveyor.serving import verdicts
from conveyor.serving.auth import ApiKeys
from conveyor.serving.tabular import TabularEndpoint


@pytest.fixture
def engine(bare_project: Path) -> TabularEndpoint:
    root = bare_project
    serving = yaml.safe_load((root / "policies" / "serving.yaml").read_text())
    serving["rate_limit"] = {"per_second": 1, "burst": 2}
    serving["failed_auth_limit"] = {"per_second": 1, "burst": 3}
    (root / "policies" / "serving.yaml").write_text(yaml.safe_dump(serving))
    made = TabularEndpoint(Workspace.open(root, home=str(root / ".conveyor")))
    yield made
    made.close()


def keys(engine: TabularEndpoint) -> ApiKeys:
    return engine.core.access.keys  # the engine's own reader sees what it writes at once (others within its recheck)


def test_without_a_key_the_caller_gets_401_and_the_refusal_is_counted(engine: TabularEndpoint) -> None:
    for token in (None, "", "not-a-key"):
        with pytest.raises(RequestRefused) as caught:
            engine.core.access.authorize(token, client="10.0.0.1")
        assert caught.value.http_status == 401
    assert 'conveyor_client_errors_total{reason="unauthorized"} 3.0' in engine.core.metrics.render()


def test_every_series_an_alert_watches_is_there_from_the_start_at_zero(engine: TabularEndpoint) -> None:
    text = engine.core.metrics.render()
    for reason in ("unauthorized", "auth_limited", "forbidden", "rate_limited", "invalid"):
        assert f'conveyor_client_errors_total{{reason="{reason}"}} 0.0' in text
    for name in ("conveyor_canary_rollbacks_total", "conveyor_fallbacks_total", "conveyor_model_load_refusals_total"):
        assert f'{name}{{model="loan-default"}} 0.0' in text
    assert 'conveyor_canary_weight{model="loan-default"} 0.0' in text
    engine.core.metrics.deployed("loan-default", "7", "champion", llm=False)
    text = engine.core.metrics.render()
    for name in ("conveyor_predict_requests_total", "conveyor_predict_errors_total"):
        assert f'{name}{{model="loan-default",role="champion",version="7"}} 0.0' in text


def test_an_address_past_its_wrong_keys_gets_429_and_a_valid_key_still_passes(engine: TabularEndpoint) -> None:
    statuses = []
    for _ in range(5):
        with pytest.raises(RequestRefused) as caught:
            engine.core.access.authorize("cvk_wrong", client="10.0.0.2")
        statuses.append(caught.value.http_status)
    assert statuses == [401, 401, 401, 429, 429]  # burst 3
    token = keys(engine).create("app", per_second=100, burst=100)
    assert engine.core.access.authorize(token, client="10.0.0.2").name == "app"  # a shared address is not locked out
    with pytest.raises(RequestRefused) as caught:
        engine.core.access.authorize("cvk_wrong", client="10.0.0.3")
    assert caught.value.http_status == 401  # another address has its own allowance


def test_a_predict_key_may_predict_but_not_administer(engine: TabularEndpoint) -> None:
    token = keys(engine).create("app", per_second=100, burst=100)
    assert engine.core.access.authorize(token).name == "app"
    with pytest.raises(RequestRefused) as caught:
        engine.core.access.authorize(token, admin=True)
    assert caught.value.http_status == 403 and "'app' is not an admin key" in str(caught.value)
    admin = keys(engine).create("ops", admin=True)
    assert engine.core.access.authorize(admin, admin=True).admin


def test_a_key_over_its_limit_gets_429(engine: TabularEndpoint) -> None:
    token = keys(engine).create("burst")  # the policy's 1/s, burst 2
    role = engine.core.access.authorize(token)
    engine.core.access.admit(role)
    engine.core.access.admit(role)
    with pytest.raises(RequestRefused) as caught:
        engine.core.access.admit(role)
    assert caught.value.http_status == 429 and "1 requests/s" in str(caught.value)


def test_with_no_champion_it_is_not_ready_and_says_so(
    engine: TabularEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="conveyor.serving"):
        status = engine.core.sync()  # the registry is empty: nothing to load, nothing refused
        engine.core.sync()
    assert not engine.core.ready and status["champion"] is None and status["refused"] == {}
    said = [r.getMessage() for r in caplog.records if "not ready" in r.getMessage()]
    assert len(said) == 1 and "loan-default has no @champion" in said[0] and "conveyor promote" in said[0]
    with pytest.raises(RequestRefused) as caught:
        asyncio.run(engine.predict(b'{"rows": [{"x": 1}]}'))
    assert caught.value.http_status == 503 and "no verified champion" in str(caught.value)


def test_admin_verbs_need_a_canary_and_a_sane_weight(engine: TabularEndpoint) -> None:
    for call in (lambda: verdicts.set_weight(engine.core, 30), lambda: verdicts.abort(engine.core, "why")):
        with pytest.raises(RequestRefused) as caught:
            call()
        assert caught.value.http_status == 409 and "no canary" in str(caught.value)


def test_a_load_cut_short_by_a_stop_is_not_recorded_as_refused(engine: TabularEndpoint) -> None:
    """A service stopped during a model switch must not write a false ``model.load_refused``."""
    engine.core._refuse("3", "champion", "its files went away")  # a real refusal, while serving
    engine.core._stop.set()
    engine.core._refuse("4", "champion", "its files went away")  # the same, while stopping
    refused = [e.details["version"] for e in engine.core.ledger.iter_events() if e.kind == "model.load_refused"]
    assert refused == ["3"] and engine.core.status()["refused"] == {"champion": "3"}
