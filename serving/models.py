"""Models as the service holds them: verified first, then loaded from exactly the verified files.

``load_verified`` runs the whole ``verify`` chain into a folder that is kept, and loads the model
from that folder, so what answers requests is byte for byte what was verified. The champion runs
in the service's own process (``InProcessModel``); a canary runs in a child process of its own
(``IsolatedModel``), so a canary that crashes, hangs or leaks takes down only its child: its
requests fail over to the champion and count against it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from registry.workspace import prepare_process
from serving.schema import Column, columns_from_signature

__all__ = ["Answer", "InProcessModel", "IsolatedModel", "LoadRefused", "ModelFailed", "VerifiedModel", "load_verified"]


class LoadRefused(Exception):
    """The model did not verify, or cannot be served: the service keeps what it had."""


class ModelFailed(Exception):
    """A model could not answer: it raised, timed out, or its process died."""


@dataclass(frozen=True)
class VerifiedModel:
    """A verified version's files on local disk, and what the service needs to know about it."""

    name: str
    version: str
    folder: Path  # the verified files; deleted by ``discard``
    version_digest: str
    signer: str
    columns: tuple[Column, ...]
    task: str  # classification: the answer is P(positive class); regression: the prediction

    def discard(self) -> None:
        shutil.rmtree(self.folder.parent, ignore_errors=True)


def load_verified(
    ref: str, *, policy: Any, root: Path, keys_dir: Path, ledger: Any, task: str, workspace: Path
) -> VerifiedModel:
    """Verify ``ref`` (every link of ``conveyor verify``) and keep its files in ``workspace``."""
    from mlflow.models import Model

    from registry.verify import verify_version

    workspace.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="model-", dir=workspace))
    report = verify_version(ref, policy, root=root, keys_dir=keys_dir, ledger=ledger, keep=folder / "files")
    try:
        if not report.ok:
            failed = report.first_failure
            assert failed is not None  # the report is not ok: some link failed
            raise LoadRefused(f"{ref} did not verify: the {failed.name} link failed: {failed.detail}")
        model_dir = folder / "files"
        try:
            columns = tuple(columns_from_signature(Model.load(str(model_dir / "MLmodel")).signature))
        except (OSError, ValueError) as exc:
            raise LoadRefused(f"{ref} cannot be served: {exc}") from None
    except LoadRefused:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return VerifiedModel(
        report.name, str(report.version), model_dir, str(report.version_digest), str(report.signer), columns, task
    )


@dataclass(frozen=True)
class Answer:
    values: np.ndarray  # one float per row
    model_ms: float  # the model's own time, without queueing or the process boundary


def _timed(predict: Any, rows: list[dict[str, Any]]) -> Answer:
    started = time.perf_counter()
    values = predict(rows)
    return Answer(values, (time.perf_counter() - started) * 1000)


_NUMERIC = {"double", "float", "long", "integer"}


def frame_of(rows: list[dict[str, Any]], columns: tuple[Column, ...]) -> pd.DataFrame:
    """Checked rows as the frame the model was trained on: numbers as float64 (None as NaN), text as objects."""
    data = {}
    for column in columns:
        values = [row[column.name] for row in rows]
        if column.type in _NUMERIC:
            data[column.name] = np.array([np.nan if v is None else v for v in values], dtype="float64")
        else:
            data[column.name] = np.array(values, dtype=object)
    return pd.DataFrame(data)


def _predictor(model_dir: Path, task: str, columns: tuple[Column, ...]) -> Any:
    """The loaded model's answer function: rows in, one float per row out."""
    import mlflow.sklearn

    model = mlflow.sklearn.load_model(str(model_dir))
    if task == "classification":
        return lambda rows: np.asarray(model.predict_proba(frame_of(rows, columns)))[:, 1]
    return lambda rows: np.asarray(model.predict(frame_of(rows, columns)), dtype=float)


class InProcessModel:
    """The model in this process: the fast path, for the champion.

    Requests that arrive while the model is busy are answered together in one call (adaptive
    batching: no added wait when idle, one frame and one predict for many requests under load).
    """

    def __init__(self, verified: VerifiedModel, *, max_batch_rows: int = 512) -> None:
        self.verified = verified
        self.deployment: str | None = None  # the ledger's name for this deployment, once recorded
        self._predict = _predictor(verified.folder, verified.task, verified.columns)
        self._max_rows = max_batch_rows
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def predict(self, rows: list[dict[str, Any]], timeout: float | None = None) -> Answer:
        if self._queue is None or self._worker is None or self._worker.done():
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            self._worker = self._loop.create_task(self._batches(self._queue))
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((rows, answer))
        return await answer

    async def _batches(self, queue: asyncio.Queue) -> None:
        while True:
            batch = [await queue.get()]
            size = len(batch[0][0])
            while not queue.empty() and size < self._max_rows:
                batch.append(queue.get_nowait())
                size += len(batch[-1][0])
            rows = [row for request, _ in batch for row in request]
            try:
                answer = await asyncio.to_thread(_timed, self._predict, rows)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(ModelFailed(f"the model raised {type(exc).__name__}: {exc}"))
                continue
            start = 0
            for request, future in batch:
                if not future.done():
                    part = answer.values[start : start + len(request)]
                    future.set_result(Answer(part, answer.model_ms))
                start += len(request)

    def close(self) -> None:
        """Stop the batching task (from any thread); requests already answered are unaffected."""
        if self._worker is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._worker.cancel)


# -- the isolated model: a child process that loads the model once and answers frames -----------

_child_predict: Any = None


def _child_start(model_dir: str, task: str, columns: tuple[Column, ...]) -> None:
    global _child_predict  # noqa: PLW0603 - one model per child process
    prepare_process()  # telemetry off, one BLAS thread: this child is a model process too
    _child_predict = _predictor(Path(model_dir), task, columns)


def _child_run(rows: list[dict[str, Any]]) -> Answer:
    return _timed(_child_predict, rows)


class IsolatedModel:
    """The model in a child process of its own: for the canary.

    A call that raises, outlasts ``timeout`` or finds the process dead raises ``ModelFailed``; a
    dead or hung child is replaced (loaded afresh from the same verified files) on the next call.
    """

    def __init__(self, verified: VerifiedModel) -> None:
        self.verified = verified
        self.deployment: str | None = None  # the ledger's name for this deployment, once recorded
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._ready: concurrent.futures.Future | None = None
        self._start()
        # Load now, so the first requests do not pay for it (and a model that cannot load fails here).
        try:
            self._ready.result(timeout=120)  # type: ignore[attr-defined]
        except Exception as exc:
            self.close()
            raise LoadRefused(
                f"{verified.name} version {verified.version} failed to load in its process: {exc!r}"
            ) from None

    def _start(self) -> None:
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_start,
            initargs=(str(self.verified.folder), self.verified.task, self.verified.columns),
        )
        self._ready = self._pool.submit(os.getpid)  # done once the child has loaded the model

    async def predict(self, rows: list[dict[str, Any]], timeout: float | None = None) -> Answer:
        with self._lock:
            pool, ready = self._pool, self._ready
        if pool is None or ready is None:
            raise ModelFailed("the model's process is closed")
        if not ready.done():
            raise ModelFailed("the model's process is restarting")
        try:
            future = pool.submit(_child_run, rows)
        except (concurrent.futures.BrokenExecutor, RuntimeError):  # died, or replaced meanwhile
            self._replace(pool)
            raise ModelFailed("the model's process had died; it is being restarted") from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            self._replace(pool)  # a hung child holds the only slot: start over
            raise ModelFailed(f"no answer within {timeout:.2f} s") from None
        except concurrent.futures.BrokenExecutor:
            self._replace(pool)
            raise ModelFailed("the model's process died") from None
        except asyncio.CancelledError:
            if future.cancelled():  # the call was still queued when its process was stopped
                raise ModelFailed("the model's process was stopped before it answered") from None
            raise  # the request itself was cancelled
        except Exception as exc:
            raise ModelFailed(f"the model raised {type(exc).__name__}: {exc}") from None

    def _replace(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        """A fresh child instead of ``broken``; the old one is killed off the caller's thread."""
        with self._lock:
            if self._pool is not broken:
                return  # replaced already, or closed
            self._start()
        threading.Thread(target=_kill, args=(broken,), name="kill-model-process", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            _kill(pool)


def _kill(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop a pool now, even one whose child hangs: no waiting on the stuck call."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join(timeout=5)
