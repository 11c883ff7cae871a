"""The tabular runtime on its own: a real scikit-learn model, stored with skops as training stores
it, in a child process of its own (``serving.models.ModelProcess``). What it answers and how it
times itself, how it batches, what a model that breaks the output contract, hangs, dies or cannot
load costs, and what closing it leaves. The service around it: ``tests/integration/test_serving.py``.

A runtime serves one event loop for its life (the service's): each test runs in one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import yaml

from conveyor.policies.errors import LoadRefused, ModelFailed
from conveyor.serving.contract import InputContract
from conveyor.serving.models import ModelProcess, VerifiedModel
from conveyor.serving.schema import Column

COLUMNS = (Column("income", "double"), Column("debt", "double"))
ROWS = [{"income": 50_000.0, "debt": 1_000.0}, {"income": 9_000.0, "debt": 30_000.0}]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A logistic regression stored as an MLflow scikit-learn folder with skops, and the estimator itself."""
    import pandas as pd
    import skops.io
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.normal(size=(400, 2)) * [20_000, 10_000] + [40_000, 10_000], columns=["income", "debt"])
    labels = (features["debt"] * 2 > features["income"] * 0.5).astype(int)
    estimator = LogisticRegression(max_iter=1000).fit(features, labels)
    folder = tmp_path_factory.mktemp("model") / "files"
    folder.mkdir()
    skops.io.dump(estimator, folder / "model.skops")
    flavor = {"serialization_format": "skops", "pickled_model": "model.skops", "skops_trusted_types": []}
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {"sklearn": flavor}}))
    return folder, estimator


def verified(folder: Path, *, classes: tuple[Any, ...] | None = (0, 1)) -> VerifiedModel:
    return VerifiedModel(
        "loan-default",
        "1",
        folder,
        "sha256:" + "1" * 64,
        "tests",
        COLUMNS,
        "classification",
        InputContract({}, classes),
    )


@pytest.fixture
def process(model_files: tuple[Path, Any]) -> Iterator[ModelProcess]:
    made = ModelProcess(verified(model_files[0]), timeout=30)
    made.wait_loaded()
    yield made
    made.close()


def child_of(runtime: ModelProcess) -> psutil.Process:
    """The runtime's process, which must be this test's child."""
    assert runtime.pid is not None
    child = psutil.Process(runtime.pid)
    assert child in psutil.Process().children()
    return child


def test_it_answers_the_positive_class_probability_as_the_estimator_does_and_times_itself(
    process: ModelProcess, model_files: tuple[Path, Any]
) -> None:
    import pandas as pd

    async def scenario() -> tuple[Any, float]:
        return await process.predict(ROWS), await process.time_call(ROWS)

    answer, timed = asyncio.run(scenario())
    expected = model_files[1].predict_proba(pd.DataFrame(ROWS))[:, 1]
    np.testing.assert_allclose(answer.values, expected, rtol=1e-12)
    assert answer.batch_rows == 2 and answer.model_ms > 0 and answer.cpu_ms >= 0 and timed >= 0


def test_concurrent_requests_are_batched_into_one_call_and_each_gets_its_own_rows(process: ModelProcess) -> None:
    async def many() -> list[Any]:
        return await asyncio.gather(*(process.predict([ROWS[i % 2]]) for i in range(50)))

    answers = asyncio.run(many())
    assert [len(a.values) for a in answers] == [1] * 50
    assert max(a.batch_rows for a in answers) > 1  # those that waited went together
    assert answers[0].values[0] != answers[1].values[0]  # and each got its own row's answer
    assert all(a.values[0] == answers[i % 2].values[0] for i, a in enumerate(answers))


def test_an_answer_that_breaks_the_output_contract_is_a_contract_failure(model_files: tuple[Path, Any]) -> None:
    runtime = ModelProcess(verified(model_files[0], classes=(0, 1, 2)), timeout=30)  # signed for three classes
    runtime.wait_loaded()
    try:
        with pytest.raises(ModelFailed) as caught:
            asyncio.run(runtime.predict(ROWS))
        assert caught.value.kind == "contract" and "expected 3 class probabilities" in str(caught.value)
    finally:
        runtime.close()


async def answered(runtime: ModelProcess, seconds: float = 60) -> Any:
    """The first answer once the runtime's new process has loaded."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await runtime.predict(ROWS)
        except ModelFailed as exc:  # still restarting
            assert exc.kind == "crash" and time.monotonic() < deadline, f"no new process within {seconds} s"
            await asyncio.sleep(0.2)


def test_a_call_past_its_timeout_fails_and_the_process_is_replaced(model_files: tuple[Path, Any]) -> None:
    runtime = ModelProcess(verified(model_files[0]), timeout=1e-6)
    runtime.wait_loaded()
    first = child_of(runtime).pid

    async def scenario() -> Any:
        with pytest.raises(ModelFailed) as caught:
            await runtime.predict(ROWS)
        assert caught.value.kind == "timeout"
        runtime.timeout = 30
        return await answered(runtime)  # by a new process, loaded afresh from the same files

    try:
        assert len(asyncio.run(scenario()).values) == 2
        assert child_of(runtime).pid != first
    finally:
        runtime.close()


def test_a_dead_process_fails_its_call_and_the_next_call_gets_a_new_one(process: ModelProcess) -> None:
    child = child_of(process)
    child.kill()
    child.wait(10)

    async def scenario() -> Any:
        with pytest.raises(ModelFailed) as caught:
            await process.predict(ROWS)
        assert caught.value.kind == "crash"
        return await answered(process)

    answer = asyncio.run(scenario())
    assert len(answer.values) == 2 and child_of(process).pid != child.pid


def test_a_model_file_that_cannot_be_read_is_refused_at_load(tmp_path: Path, model_files: tuple[Path, Any]) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "MLmodel").write_text((model_files[0] / "MLmodel").read_text())
    (folder / "model.skops").write_bytes(b"not a skops file")
    runtime = ModelProcess(verified(folder), timeout=30)
    with pytest.raises(LoadRefused) as caught:
        runtime.wait_loaded()
    assert "loan-default version 1 failed to load in its process" in str(caught.value)


def test_closing_answers_what_was_queued_then_refuses_new_calls_and_stops_the_child(process: ModelProcess) -> None:
    child = child_of(process)

    async def queued_then_closed() -> list[Any]:
        calls = [asyncio.ensure_future(process.predict(ROWS)) for _ in range(20)]
        await asyncio.sleep(0)  # queued
        process.close()
        answers = await asyncio.gather(*calls, return_exceptions=True)
        with pytest.raises(ModelFailed):
            await process.predict(ROWS)
        return answers

    answers = asyncio.run(queued_then_closed())
    assert all(not isinstance(a, BaseException) and len(a.values) == 2 for a in answers)
    child.wait(15)
    assert not child.is_running()
