"""Models as the service holds them: verified first, then loaded from exactly the verified files.

``load_verified`` runs the whole ``verify`` chain into a folder that is kept, and loads the model
from that folder, so what answers requests is byte for byte what was verified. Champion and
canary alike run in a child process of their own (``ModelProcess``): a model that crashes, hangs
or leaks takes down only its child, the service's event loop never waits on a model's CPU, and
both sides are measured the same way (the model's own time, taken in its process around the same
call). Requests that arrive while a model is busy are answered together in one call (adaptive
batching: no added wait when idle). Every answer is checked against the output contract
(``serving.contract``) in this process before it counts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from conveyor.policies.errors import ConveyorError, LoadRefused, ModelFailed
from conveyor.registry.loading import load_estimator, make_read_only, untrusted_types
from conveyor.serving.contract import ContractBreach, InputContract, check_output
from conveyor.serving.runtime import Answer, PredictRuntime
from conveyor.serving.schema import Column, columns_from_mlmodel
from conveyor.serving.spare import warm_pool

__all__ = [
    "ModelProcess",
    "VerifiedModel",
    "frame_of",
    "load_verified",
    "verified_files",
    "warm_pool",
]


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
    contract: InputContract = field(default_factory=InputContract)
    loadable: tuple[str, ...] = ()  # the types skops may be told to trust (checked before the child loads it)

    def discard(self) -> None:
        shutil.rmtree(self.folder.parent, ignore_errors=True)


@contextmanager
def verified_files(ref: str, workspace: Path, verify: Callable[[Path], Any]) -> Iterator[tuple[Any, Path]]:
    """``ref``'s files, verified by ``verify(keep)`` into a new folder under ``workspace`` and made
    read-only: the report and the files. ``LoadRefused`` when a link failed; the folder is removed
    if anything in the ``with`` block fails too."""
    workspace.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="model-", dir=workspace))
    try:
        report = verify(folder / "files")
        if not report.ok:
            failed = report.first_failure
            assert failed is not None  # the report is not ok: some link failed
            raise LoadRefused(f"{ref} did not verify: the {failed.name} link failed: {failed.detail}")
        make_read_only(folder / "files")  # what the model process opens (or maps) stays what was verified
        yield report, folder / "files"
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def load_verified(
    ref: str,
    *,
    policy: Any,
    root: Path,
    keys_dir: Path,
    ledger: Any,
    task: str,
    workspace: Path,
    loadable: tuple[str, ...],
) -> VerifiedModel:
    """Verify ``ref`` (every link of ``conveyor verify``) and keep its files, read-only, in
    ``workspace``; refused when its signed ``MLmodel`` asks to trust a type outside ``loadable``."""
    import yaml

    # here: registry.verify is loaded by the process that verifies, not the model's child
    from conveyor.registry.verify import verify_version

    def verify(keep: Path) -> Any:
        return verify_version(ref, policy, root=root, keys_dir=keys_dir, ledger=ledger, keep=keep)

    with verified_files(ref, workspace, verify) as (report, model_dir):
        try:
            mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
            columns = tuple(columns_from_mlmodel(mlmodel))
            contract = InputContract.from_metadata(mlmodel.get("metadata"))
            outside = untrusted_types(model_dir, loadable)
        except (OSError, ValueError, yaml.YAMLError, ConveyorError) as exc:
            raise LoadRefused(f"{ref} cannot be served: {exc}") from None
        if outside:
            raise LoadRefused(
                f"{ref} asks to trust type(s) outside policies/signing.yaml loadable_types: {', '.join(outside)}"
            )
    return VerifiedModel(
        report.name,
        str(report.version),
        model_dir,
        str(report.version_digest),
        str(report.signer),
        columns,
        task,
        contract,
        loadable,
    )


_NUMERIC = {"double", "float", "long", "integer"}
log = logging.getLogger("conveyor.serving")


def frame_of(rows: list[dict[str, Any]], columns: tuple[Column, ...]) -> pd.DataFrame:
    """Checked rows as the frame the model was trained on: numbers and booleans as float64 (None as
    NaN), text as objects."""
    data = {}
    for column in columns:
        values = [row[column.name] for row in rows]
        if column.type in _NUMERIC or column.type == "boolean":  # a boolean as training saw it: 1.0/0.0
            data[column.name] = np.array([np.nan if v is None else v for v in values], dtype="float64")
        else:
            data[column.name] = np.array(values, dtype=object)
    return pd.DataFrame(data)


# -- the child process: loads the model once and answers frames ----------------------------------

_child: Any = None
_CLOSE = object()  # on a model's queue: stop once what is before it is answered


def _child_load(model_dir: str, task: str, columns: tuple[Column, ...], loadable: tuple[str, ...]) -> int:
    global _child  # noqa: PLW0603 - one model per child process
    model = load_estimator(Path(model_dir), loadable)
    method = model.predict_proba if task == "classification" else model.predict
    _child = (method, columns)
    return os.getpid()


def _child_run(rows: list[dict[str, Any]]) -> tuple[Any, float, float]:
    """The model's raw answer for ``rows``, its wall time and its CPU time in ms (checked by the parent, not here).

    The CPU time is the model's own work, whatever else the machine runs: a process that waits
    for a core on a busy machine is not a slower model."""
    method, columns = _child
    started, cpu = time.perf_counter(), time.thread_time()
    raw = np.asarray(method(frame_of(rows, columns)))
    return raw, (time.perf_counter() - started) * 1000, (time.thread_time() - cpu) * 1000


class ModelProcess(PredictRuntime):
    """A verified model in a child process of its own, with adaptive batching and the output contract.

    A call that raises, outlasts ``timeout``, finds the process dead or breaks the contract raises
    ``ModelFailed`` (with its ``kind``); a dead or hung child is replaced (loaded afresh from the
    same verified files) on the next call.
    """

    def __init__(
        self,
        verified: VerifiedModel,
        *,
        timeout: float | None = None,
        max_batch_rows: int = 512,
        pool: concurrent.futures.ProcessPoolExecutor | None = None,
    ) -> None:
        self.verified = verified
        self.timeout = timeout
        self._max_rows = max_batch_rows
        self._classes = verified.contract.classes
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._ready: concurrent.futures.Future | None = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._inflight: list[tuple[Any, asyncio.Future]] = []
        self._start(pool)

    def wait_loaded(self, timeout: float = 120) -> None:
        """Block until the child has loaded the model; ``LoadRefused`` when it cannot."""
        try:
            self._ready.result(timeout=timeout)  # type: ignore[union-attr]
        except Exception as exc:
            self.close()
            raise LoadRefused(
                f"{self.verified.name} version {self.verified.version} failed to load in its process: {exc!r}"
            ) from None

    def _start(self, pool: concurrent.futures.ProcessPoolExecutor | None = None) -> None:
        self._pool = pool or warm_pool()
        self.pid = None  # the child's, once it has loaded the model
        v = self.verified
        self._ready = self._pool.submit(_child_load, str(v.folder), v.task, v.columns, v.loadable)  # once loaded
        self._ready.add_done_callback(self._loaded)

    def _loaded(self, ready: concurrent.futures.Future) -> None:
        if ready is self._ready and not ready.cancelled() and ready.exception() is None:  # not one replaced meanwhile
            self.pid = int(ready.result())

    async def predict(self, rows: list[dict[str, Any]]) -> Answer:
        if self._closing:
            raise ModelFailed("the model is being stopped", "crash")
        if self._queue is None or self._worker is None or self._worker.done():
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            self._worker = self._loop.create_task(self._batches(self._queue))
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((rows, answer))
        return await answer

    async def _batches(self, queue: asyncio.Queue) -> None:
        try:
            while await self._batch(queue):
                pass
        except asyncio.CancelledError:  # stopped before the queue drained: nobody waits for ever
            stopped = ModelFailed("the model's process was stopped before it answered", "crash")
            _fail(self._inflight, stopped)
            while not queue.empty():
                item = queue.get_nowait()
                if item is not _CLOSE:
                    _fail([item], stopped)
            raise
        finally:
            with self._lock:
                pool, self._pool = self._pool, None
            if pool is not None:
                threading.Thread(target=_kill, args=(pool,), name="kill-model-process", daemon=True).start()

    async def _batch(self, queue: asyncio.Queue) -> bool:
        """Answer the next batch (all that waits, up to the row limit); False once closed and drained."""
        first = await queue.get()
        if first is _CLOSE:
            return False
        batch = self._inflight = [first]
        size = len(batch[0][0])
        last = False
        while not queue.empty() and size < self._max_rows:
            item = queue.get_nowait()
            if item is _CLOSE:
                last = True  # closed: this batch is the last
                break
            batch.append(item)
            size += len(item[0])
        rows = [row for request, _ in batch for row in request]
        try:
            raw, model_ms, cpu_ms = await self._call(rows)
            values = check_output(raw, len(rows), self.verified.task, self._classes)
        except ModelFailed as exc:
            _fail(batch, exc)
            return not last
        except ContractBreach as exc:
            _fail(batch, ModelFailed(f"its answer broke the output contract: {exc}", "contract"))
            return not last
        except Exception as exc:  # anything else about the answer is the model's fault too
            _fail(batch, ModelFailed(f"its answer could not be read: {type(exc).__name__}: {exc}", "contract"))
            return not last
        start = 0
        for request, future in batch:
            if not future.done():
                future.set_result(Answer(values[start : start + len(request)], model_ms, len(rows), cpu_ms))
            start += len(request)
        return not last

    async def time_call(self, rows: list[dict[str, Any]]) -> float:
        """The model's CPU time (ms) for exactly ``rows`` as one call of their own, not batched with
        anything: a canary's answer timed on the champion too, so both sides did the same work."""
        _, _, cpu_ms = await self._call(rows)
        return cpu_ms

    async def _call(self, rows: list[dict[str, Any]]) -> tuple[Any, float, float]:
        with self._lock:
            pool, ready = self._pool, self._ready
        if pool is None or ready is None:
            raise ModelFailed("the model's process is closed", "crash")
        if not ready.done():
            raise ModelFailed("the model's process is (re)starting", "crash")
        try:
            future = pool.submit(_child_run, rows)
        except (concurrent.futures.BrokenExecutor, RuntimeError):  # died, or replaced meanwhile
            self._replace(pool)
            raise ModelFailed("the model's process had died; it is being restarted", "crash") from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            self._replace(pool)  # a hung child holds the only slot: start over
            raise ModelFailed(f"no answer within {self.timeout:.2f} s", "timeout") from None
        except concurrent.futures.BrokenExecutor:
            self._replace(pool)
            raise ModelFailed("the model's process died", "crash") from None
        except asyncio.CancelledError:
            if future.cancelled():  # the call was still queued when its process was stopped
                raise ModelFailed("the model's process was stopped before it answered", "crash") from None
            raise
        except Exception as exc:
            raise ModelFailed(f"the model raised {type(exc).__name__}: {str(exc)[:300]}") from None

    def _replace(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        """A fresh child instead of ``broken``; the old one is killed off the caller's thread."""
        with self._lock:
            if self._pool is not broken:
                return  # replaced already, or closed
            log.warning("restarting the process of %s version %s", self.verified.name, self.verified.version)
            self._start()
        threading.Thread(target=_kill, args=(broken,), name="kill-model-process", daemon=True).start()

    def close(self, drain_seconds: float = 10.0) -> None:
        """Stop, from any thread: what is queued is still answered (for at most ``drain_seconds``,
        then failed), new calls fail, and then the child is stopped."""
        self._closing = True
        loop, worker = self._loop, self._worker
        if worker is not None and loop is not None and not loop.is_closed() and not worker.done():
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, _CLOSE)  # type: ignore[union-attr]
                loop.call_soon_threadsafe(lambda: loop.call_later(drain_seconds, worker.cancel))
                return  # the batching task stops the child once drained
            except RuntimeError:  # the loop closed meanwhile
                pass
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            _kill(pool)


def _fail(batch: list[tuple[Any, asyncio.Future]], exc: ModelFailed) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _kill(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop a pool now, even one whose child hangs: no waiting on the stuck call."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join(timeout=5)
