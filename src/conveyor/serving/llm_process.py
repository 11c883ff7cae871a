"""An LLM release's model in a child process of its own, streaming its tokens back to the worker.

As for tabular models (``serving.models``), each model runs in its own process: a runtime that
crashes or hangs takes down only its child (started afresh for the next request), the worker's
event loop never waits on generation, and both sides of a canary are timed the same way, in
their own processes, from the runtime's stream (time to first token, time per output token).

The runtime generates one answer at a time (llama.cpp is not thread-safe); requests wait their
turn in a queue of at most ``max_waiting``, past which the model is *overloaded* and the caller
goes to the next release. A generation whose client went away is cancelled between two tokens,
and the tokens made until then are counted. The worker speaks to its child over a pipe: one
message per text piece, then the finished generation with its token counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from conveyor.policies.errors import LoadRefused, ModelFailed
from conveyor.registry.workspace import prepare_process
from conveyor.serving import runtime
from conveyor.serving.llm import LocalModel
from conveyor.serving.runtime import Generated, GenerateRuntime

__all__ = ["Generation", "ReleaseProcess"]

log = logging.getLogger("conveyor.serving")

Request = list[dict[str, str]] | str


def _child(connection: Any, weights: str, runtime: dict[str, Any]) -> None:
    """The child: load the model once, then answer ``generate`` messages until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its worker stops it (a terminal's Ctrl-C reaches the group)

    prepare_process()

    try:
        model = LocalModel(Path(weights), **runtime)
    except Exception as exc:
        connection.send(("load_failed", None, f"{type(exc).__name__}: {exc}"))
        return
    connection.send(("loaded", os.getpid(), model.threads))
    cancelled: set[int] = set()

    def set_threads(threads: int) -> None:
        model.set_threads(threads)
        connection.send(("threads", None, model.threads))

    def stop_asked(request_id: int) -> bool:
        while connection.poll():  # a cancel came meanwhile (a late one, for an answer already sent, is moot)
            kind, target, *_ = connection.recv()
            if kind == "close":
                raise SystemExit(0)
            if kind == "threads":
                set_threads(target)
            elif target == request_id:
                cancelled.add(target)
        return request_id in cancelled

    while True:
        try:
            kind, request_id, *rest = connection.recv()
        except (EOFError, OSError):
            return
        if kind == "close":
            return
        if kind == "threads":
            set_threads(request_id)
            continue
        if kind != "generate" or request_id in cancelled:
            cancelled.discard(request_id)
            continue
        request, params, fresh = rest

        def stop(request_id: int = request_id) -> bool:
            return stop_asked(request_id)

        try:
            for piece, done in model.stream(request, params, fresh=fresh, cancelled=stop):
                if done is not None:
                    connection.send(("done", request_id, asdict(done)))
                else:
                    connection.send(("piece", request_id, piece))
        except SystemExit:
            return
        except Exception as exc:
            connection.send(("error", request_id, f"{type(exc).__name__}: {str(exc)[:300]}"))
        cancelled.discard(request_id)


class ReleaseProcess(GenerateRuntime):
    """One release's model in a child process: ``begin`` a generation, iterate its pieces."""

    def __init__(
        self, weights: Path, runtime: dict[str, Any], *, name: str, max_waiting: int = 8, fresh: bool = False
    ) -> None:
        """``fresh``: drop llama.cpp's cached prompt before each generation (serving keeps it: a
        conversation's next turn reuses its prefix; a comparison with the evaluation turns it off)."""
        self.weights, self.runtime, self.name, self.max_waiting = weights, runtime, name, max_waiting
        self.fresh = fresh
        self._ids = itertools.count(1)
        self._state = threading.Lock()
        self._streams: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._turn: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._pending = 0  # requests answering or waiting for their turn
        self._closing = False
        self._process: Any = None
        self._connection: Any = None
        self._loaded = threading.Event()
        self._load_error: str | None = None
        self.pid: int | None = None
        self.threads: int | None = None  # what the child's runtime generates on (it says so)
        self._wanted: int | None = None
        self._start()

    # -- the child ---------------------------------------------------------------------------------

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        runtime = self.runtime | ({"threads": self._wanted} if self._wanted else {})  # a restart keeps its share
        process = context.Process(
            target=_child, args=(theirs, str(self.weights), runtime), name=f"llm-{self.name}", daemon=True
        )
        self._loaded.clear()
        self._load_error = None
        process.start()
        theirs.close()
        with self._state:
            self._process, self._connection = process, ours
        threading.Thread(target=self._read, args=(process, ours), name=f"llm-reader-{self.name}", daemon=True).start()

    def _read(self, process: Any, connection: Any) -> None:
        """Hand each message of the child to the stream that waits for it; on the child's end, fail them all."""
        while True:
            try:
                kind, target, payload = connection.recv()
            except (EOFError, OSError):
                break
            if kind == "loaded":
                self.pid, self.threads = target, payload
                self._loaded.set()
            elif kind == "threads":
                self.threads = payload
            elif kind == "load_failed":
                self._load_error = payload
                self._loaded.set()
            else:
                self._deliver(target, (kind, payload))
        with self._state:
            current = self._process is process  # not a child killed and replaced already
            if current:
                self._process = self._connection = None
            streams = list(self._streams) if current else []
        if current and not self._loaded.is_set():
            process.join(timeout=5)
            self._load_error = self._load_error or f"its process ended (exit code {process.exitcode})"
            self._loaded.set()
        for target in streams:
            self._deliver(target, ("crash", "the model's process died"))

    def _deliver(self, target: int, message: tuple[str, Any]) -> None:
        with self._state:
            found = self._streams.get(target)
        if found is not None:
            loop, queue = found
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
                loop.call_soon_threadsafe(queue.put_nowait, message)

    def wait_loaded(self, timeout: float = 120) -> None:
        """Block until the child has loaded the model; ``LoadRefused`` when it cannot."""
        if not self._loaded.wait(timeout):
            self.close()
            raise LoadRefused(f"{self.name} did not load within {timeout:g} s")
        if self._load_error is not None:
            self.close()
            raise LoadRefused(f"{self.name} failed to load in its process: {self._load_error}")

    def kill(self) -> None:
        """End the child now (a hung or faulty runtime): what it was answering fails, the next
        request starts a new one."""
        with self._state:
            process, self._process, self._connection = self._process, None, None
            streams = list(self._streams)
        if process is not None and process.is_alive():
            process.kill()
        for target in streams:
            self._deliver(target, ("crash", "the model's process was stopped"))

    def set_threads(self, threads: int) -> None:
        """Generate on ``threads`` threads (at most the release's own) from the child's next token on:
        two models sharing the cores each take a part, not all of them."""
        self._wanted = max(1, min(threads, int(self.runtime.get("threads", threads))))
        self._send(("threads", self._wanted))

    def close(self, drain_seconds: float = 10.0) -> None:
        """Stop the child once the requests already given to this model are answered (for at most
        ``drain_seconds``: a release swapped out fails none of them); then no request is taken."""
        deadline = time.monotonic() + drain_seconds
        while self._pending and not self._closing and time.monotonic() < deadline:
            time.sleep(0.05)
        self._closing = True
        with self._state:
            process, connection = self._process, self._connection
        if connection is not None:
            with contextlib.suppress(OSError, ValueError):
                connection.send(("close", None))
        if process is not None:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)

    # -- generations ----------------------------------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._turn is None or self._turn[0] is not loop:
            self._turn = (loop, asyncio.Lock())
        return self._turn[1]

    async def begin(
        self, request: Request, params: dict[str, Any], *, first_token_seconds: float, total_seconds: float
    ) -> Generation:
        """Wait for this model's turn (``ModelFailed`` "overload" past ``max_waiting``) and start generating."""
        if self._closing:
            raise ModelFailed("the model is being stopped", "crash")
        turn = self._lock()
        if self._pending > self.max_waiting:  # one answering, max_waiting waiting
            raise ModelFailed(f"{self._pending - 1} requests already wait for this model", "overload")
        self._pending += 1
        try:
            await asyncio.wait_for(turn.acquire(), total_seconds)
        except TimeoutError:
            self._pending -= 1
            raise ModelFailed(f"waited {total_seconds:g} s for the model's turn", "overload") from None
        except BaseException:
            self._pending -= 1
            raise
        try:
            connection = await self._running()
            request_id = next(self._ids)
            queue: asyncio.Queue = asyncio.Queue()
            with self._state:
                self._streams[request_id] = (asyncio.get_running_loop(), queue)
            connection.send(("generate", request_id, request, params, self.fresh))
        except BaseException:
            self._pending -= 1
            turn.release()
            raise
        return Generation(self, request_id, queue, turn, first_token_seconds, total_seconds)

    async def _running(self) -> Any:
        """The child's pipe, starting a new child (and waiting for its load) if the last one died."""
        with self._state:
            connection = self._connection
        if connection is not None:
            return connection
        if self._closing:
            raise ModelFailed("the model is being stopped", "crash")
        log.warning("starting a new process for %s", self.name)
        self._start()
        await asyncio.get_running_loop().run_in_executor(None, self._loaded.wait, 120)
        with self._state:
            connection = self._connection
        if self._load_error is not None or connection is None:
            raise ModelFailed(f"the model's process could not restart: {self._load_error}", "crash")
        return connection

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._state:
            connection = self._connection
        if connection is not None:
            with contextlib.suppress(OSError, ValueError):
                connection.send(message)

    def _finished(self, request_id: int) -> None:
        with self._state:
            self._streams.pop(request_id, None)
        self._pending -= 1


class Generation(runtime.Generation):
    """One answer being generated: iterate it for text pieces, then one ``Generated`` with the counts.

    ``ModelFailed`` when the model fails (kind ``error``, ``timeout``, ``crash``); ``cancel`` stops it
    between two tokens and returns what was generated. ``close`` (always, in a ``finally``) gives
    the model's turn to the next request, once the child has finished this one.
    """

    def __init__(
        self,
        process: ReleaseProcess,
        request_id: int,
        queue: asyncio.Queue,
        turn: asyncio.Lock,
        first_token_seconds: float,
        total_seconds: float,
    ) -> None:
        self.process, self.request_id, self._queue, self._turn = process, request_id, queue, turn
        self._first, self._total = first_token_seconds, total_seconds
        self._deadline = time.monotonic() + total_seconds
        self.result: Generated | None = None
        self._open = True  # the child may still send for this request
        self._pieces = 0

    def __aiter__(self) -> AsyncIterator[str | Generated]:
        return self._items()

    async def _items(self) -> AsyncIterator[str | Generated]:
        while self.result is None:
            item = await self._next()
            yield item

    async def _next(self) -> str | Generated:
        timeout = self._first if self._pieces == 0 else max(0.0, self._deadline - time.monotonic())
        try:
            kind, payload = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            self._open = False
            self.process.kill()  # a runtime that stalls holds the only turn: start over
            what = "its first token" if self._pieces == 0 else "its whole answer"
            raise ModelFailed(f"no {what} within {timeout:.1f} s", "timeout") from None
        if kind == "piece":
            self._pieces += 1
            return str(payload)
        self._open = False
        if kind == "done":
            self.result = Generated(**payload)
            return self.result
        raise ModelFailed(str(payload), "crash" if kind == "crash" else "error")

    async def cancel(self, timeout: float = 5.0) -> Generated | None:
        """Stop generating (the client went away); the generation so far, with its token counts."""
        if not self._open:
            return self.result
        self.process._send(("cancel", self.request_id))
        try:
            async with asyncio.timeout(timeout):
                while self._open:
                    item = await self._next()
                    if isinstance(item, Generated):
                        return item
        except (ModelFailed, TimeoutError):
            self.process.kill()
        return self.result

    async def close(self) -> None:
        """Free the model for the next request (cancelling this one first if it still runs)."""
        try:
            if self._open:
                await self.cancel()
        finally:
            self.process._finished(self.request_id)
            self._turn.release()
