"""The serving core on a fake loader, fake runtimes and aliases in a dictionary: what it loads when an
alias moves, what it refuses and records, who answers in which order, and what a canary's verdict
does to the aliases and to what is served. The same core on real models and a real registry:
``tests/integration/test_serving.py`` and ``tests/integration/test_gateway.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conveyor.policies.canary import Verdict
from conveyor.policies.errors import LoadRefused, ModelFailed
from conveyor.registry.events import EventKind
from conveyor.registry.workspace import Workspace
from conveyor.serving import verdicts
from conveyor.serving.core import FALLBACK, ServingCore
from conveyor.serving.faults import FaultRecorder
from conveyor.serving.runtime import GenerateRuntime, Served
from tests.unit.serving.fake_runtime import FakeRuntime

NAME = "loan-default"


@dataclass
class FakeVerified:
    name: str
    version: str
    discarded: bool = False

    @property
    def version_digest(self) -> str:
        return f"sha256:{self.version:0>64}"

    @property
    def signer(self) -> str:
        return "tests"

    def discard(self) -> None:
        self.discarded = True


class FakeLoader:
    llm = True
    judge_every = 5
    stopping_grace = 0.0

    def __init__(self) -> None:
        self.unverified: set[str] = set()  # versions that fail verification
        self.unloadable: set[str] = set()  # versions whose runtime fails to load
        self.misfit: str | None = None  # why a canary does not fit
        self.verified: list[FakeVerified] = []
        self.runtimes: dict[tuple[str, str], FakeRuntime] = {}
        self.accepted_versions: list[str] = []
        self.arrangements: list[tuple[list[str], str | None]] = []

    def verify(self, name: str, version: str, ledger: Any) -> FakeVerified:
        if version in self.unverified:
            raise LoadRefused(f"{name}/{version} did not verify: the signature link failed")
        verified = FakeVerified(name, version)
        self.verified.append(verified)
        return verified

    def open(self, verified: FakeVerified, role: str, timeout: float | None) -> FakeRuntime:
        runtime = FakeRuntime(load_error="out of memory" if verified.version in self.unloadable else "")
        self.runtimes[(role, verified.version)] = runtime
        return runtime

    def fits(self, verified: FakeVerified) -> str | None:
        return self.misfit

    def accepted(self, verified: FakeVerified) -> None:
        self.accepted_versions.append(verified.version)

    def arranged(self, routed: list[Served[GenerateRuntime]], fallback: Served[GenerateRuntime] | None) -> None:
        self.arrangements.append(([m.verified.version for m in routed], fallback and fallback.verified.version))

    def close(self) -> None:
        pass


class Aliases:
    """A model's aliases in a dictionary, with the promotion policy's answer scripted."""

    def __init__(self, **aliases: str) -> None:
        self.aliases = dict(aliases)
        self.promotion: tuple[bool, list[str]] = (True, ["canary analysis passed"])

    def version(self, alias: str) -> str | None:
        return self.aliases.get(alias)

    def digest(self, version: str) -> str | None:
        return f"sha256:{version:0>64}"

    def promote_canary(self, version: str) -> tuple[bool, list[str]]:
        if self.promotion[0]:
            self.aliases["champion"] = version
        return self.promotion

    def retire_canary(self, version: str) -> bool:
        if self.aliases.get("canary") != version:
            return False
        del self.aliases["canary"]
        return True


@pytest.fixture
def parts(bare_project: Path) -> Iterator[tuple[ServingCore[Any], FakeLoader, Aliases, Aliases]]:
    loader, aliases, fallback = FakeLoader(), Aliases(champion="1"), Aliases()
    ws = Workspace.open(bare_project, home=str(bare_project / ".conveyor"))
    core: ServingCore[Any] = ServingCore(
        ws,
        NAME,
        loader,  # type: ignore[arg-type]
        fallback_name=f"{NAME}-fallback",
        aliases=aliases,  # type: ignore[arg-type]
        fallback_aliases=fallback,  # type: ignore[arg-type]
    )
    yield core, loader, aliases, fallback
    core.close()


def events(core: ServingCore[Any], kind: str) -> list[dict[str, Any]]:
    return [e.details for e in core.ledger.iter_events() if e.kind == kind]


def test_the_champion_alias_is_verified_loaded_recorded_and_routed_to(parts: Any) -> None:
    core, loader, _, _ = parts
    status = core.sync()
    assert core.ready and status["champion"]["version"] == "1" and status["canary"] is None
    assert loader.accepted_versions == ["1"]  # its request shape is the service's
    deployed = events(core, EventKind.MODEL_DEPLOYED)
    assert [(d["version"], d["role"]) for d in deployed] == [("1", "champion")]
    assert core.champion is not None and core.champion.deployment is not None
    assert core.order("anyone", fallback=True) == [(core.champion, "champion")]
    assert loader.arrangements[-1] == (["1"], None)


def test_a_version_that_does_not_verify_is_refused_once_and_the_champion_keeps_serving(parts: Any) -> None:
    core, loader, aliases, _ = parts
    core.sync()
    loader.unverified.add("2")
    aliases.aliases["champion"] = "2"
    core.sync()
    core.sync()  # not retried while the alias still names it
    refused = events(core, EventKind.MODEL_LOAD_REFUSED)
    assert len(refused) == 1 and refused[0]["version"] == "2" and "signature link failed" in refused[0]["reason"]
    assert refused[0]["serving"] == {"champion": "1", "canary": None}
    assert core.champion is not None and core.champion.verified.version == "1"
    assert core.status()["refused"] == {"champion": "2"}
    aliases.aliases["champion"] = "3"  # the alias moves on: the refusal is forgotten once 3 is served
    core.sync()
    assert core.champion.verified.version == "3" and core.status()["refused"] == {}


def test_a_runtime_that_cannot_load_is_refused_its_copy_removed_and_the_old_champion_stays_open(parts: Any) -> None:
    core, loader, aliases, _ = parts
    core.sync()
    first = loader.runtimes[("champion", "1")]
    loader.unloadable.add("2")
    aliases.aliases["champion"] = "2"
    core.sync()
    assert core.champion is not None and core.champion.verified.version == "1" and not first.closed
    assert loader.verified[-1].version == "2" and loader.verified[-1].discarded
    assert "out of memory" in events(core, EventKind.MODEL_LOAD_REFUSED)[0]["reason"]


def test_a_new_champion_replaces_the_old_one_which_is_closed_and_its_copy_removed(parts: Any) -> None:
    core, loader, aliases, _ = parts
    core.sync()
    aliases.aliases["champion"] = "2"
    core.sync()
    assert core.champion is not None and core.champion.verified.version == "2"
    assert loader.runtimes[("champion", "1")].closed and loader.verified[0].discarded
    assert not loader.runtimes[("champion", "2")].closed and loader.accepted_versions == ["1", "2"]


def test_a_canary_that_does_not_fit_beside_the_champion_is_refused_with_the_reason(parts: Any) -> None:
    core, loader, aliases, _ = parts
    loader.misfit = "its input columns differ from the champion's: clients could not call both"
    aliases.aliases["canary"] = "2"
    core.sync()
    assert core.canary is None and ("canary", "2") not in loader.runtimes
    refused = events(core, EventKind.MODEL_LOAD_REFUSED)
    assert refused[0]["role"] == "canary" and "input columns differ" in refused[0]["reason"]


def test_the_order_is_canary_when_routed_then_champion_then_the_fallback_when_allowed(parts: Any) -> None:
    core, _, aliases, fallback = parts
    assert core.order("anyone", fallback=True) == []  # nothing loaded: the front ends say 503
    fallback.aliases["champion"] = "7"
    core.sync()
    assert core.fallback is not None and core.fallback.verified.name == f"{NAME}-fallback"
    assert [role for _, role in core.order("anyone", fallback=False)] == ["champion"]
    assert [role for _, role in core.order("anyone", fallback=True)] == ["champion", FALLBACK]
    aliases.aliases["canary"] = "2"
    core.sync()
    verdicts.set_weight(core, 100)
    assert [role for _, role in core.order("anyone", fallback=True)] == ["canary", "champion", FALLBACK]
    verdicts.set_weight(core, 0)
    assert [role for _, role in core.order("anyone", fallback=False)] == ["champion"]
    core.champion = None  # no champion: the fallback alone
    assert [role for _, role in core.order("anyone", fallback=False)] == [FALLBACK]


def test_a_rolled_back_canary_loses_its_alias_is_recorded_and_stopped(parts: Any) -> None:
    core, loader, aliases, _ = parts
    aliases.aliases["canary"] = "2"
    core.sync()
    assert core.canary is not None and core.state.canary().state == "running"
    verdicts.abort(core, "p99 latency 3x the champion's")
    assert "canary" not in aliases.aliases and core.canary is None
    assert loader.runtimes[("canary", "2")].closed
    rolled = events(core, EventKind.CANARY_ROLLED_BACK)
    assert rolled[0]["version"] == "2" and rolled[0]["alias_removed"] and rolled[0]["champion"] == "1"
    assert "aborted by an admin: p99 latency 3x the champion's" in rolled[0]["reasons"]
    assert core.state.desired().canary is None and core.state.desired().champion == "1"
    core.sync()  # the alias is gone: nothing brings the canary back
    assert core.canary is None


def test_a_canary_that_passed_is_promoted_and_served_as_champion(parts: Any) -> None:
    core, loader, aliases, _ = parts
    aliases.aliases["canary"] = "2"
    core.sync()
    verdicts.promoted(core, Verdict("advance", ["every step clean"], final=True))
    assert aliases.aliases["champion"] == "2" and core.champion is not None and core.champion.verified.version == "2"
    assert core.canary is None and loader.runtimes[("canary", "2")].closed
    assert loader.runtimes[("champion", "1")].closed  # the old champion, once the new one serves
    completed = events(core, EventKind.CANARY_COMPLETED)
    assert completed[0]["promoted"] and completed[0]["promotion"] == ["canary analysis passed"]
    assert core.state.desired().champion == "2" and core.state.desired().canary is None


def test_a_canary_the_promotion_policy_refuses_is_retired_and_the_champion_stays(parts: Any) -> None:
    core, _, aliases, _ = parts
    aliases.aliases["canary"] = "2"
    aliases.promotion = (False, ["the holdout gain is not significant"])
    core.sync()
    verdicts.promoted(core, Verdict("advance", ["every step clean"], final=True))
    assert aliases.aliases == {"champion": "1"} and core.champion is not None
    assert core.champion.verified.version == "1" and core.canary is None
    assert events(core, EventKind.CANARY_COMPLETED)[0]["promotion"] == ["the holdout gain is not significant"]


def test_a_failure_is_counted_and_recorded_at_most_once_a_minute_per_kind(parts: Any) -> None:
    core, _, _, _ = parts
    core.sync()
    champion = core.champion
    for _ in range(3):
        core.failed(champion, "champion", ModelFailed("the model's process died", "crash"))
    core.failed(champion, "champion", ModelFailed("no first token within 2 s", "timeout"))
    text = core.metrics.render()
    assert 'conveyor_predict_errors_total{model="loan-default",role="champion",version="1"} 4.0' in text
    deadline = time.monotonic() + 10
    while len(events(core, EventKind.MODEL_FAULT)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # written off the request path
    faults = events(core, EventKind.MODEL_FAULT)
    assert sorted(f["kind"] for f in faults) == ["crash", "timeout"]


def test_the_fault_recorder_counts_the_failures_between_two_records(bare_project: Path) -> None:
    ws = Workspace.open(bare_project, home=str(bare_project / ".conveyor"))
    recorder = FaultRecorder(ws, NAME, every=0.2)
    failure = ModelFailed("boom", "error")
    one, two = f"sha256:{'1' * 64}", f"sha256:{'2' * 64}"  # two deployments' content addresses
    assert recorder.record(one, "1", "champion", failure)
    assert not recorder.record(one, "1", "champion", failure)
    assert recorder.record(two, "1", "canary", failure)  # another deployment has its own minute
    time.sleep(0.25)
    assert recorder.record(one, "1", "champion", failure)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with ws.ledger() as ledger:
            faults = [e.details for e in ledger.iter_events() if e.kind == EventKind.MODEL_FAULT]
        if len(faults) == 3:
            break
        time.sleep(0.05)
    assert [f["failures"] for f in faults] == [1, 1, 2]  # the last record carries the one it held back
