"""The service's connections: uvicorn's HTTP protocol with a header deadline, and the gate first.

A client that has not sent a whole request head in ``header_timeout`` seconds (after connecting,
or after its first byte of a request) is disconnected: uvicorn times out idle keep-alive
connections but not half-sent heads, so a slow client could hold a connection (and its buffer)
for ever. And every request meets ``serving.gate.Gate`` before anything of BentoML's app runs
(its tracing, metrics and timeout middleware, its routing): a refused caller costs a header
lookup, and ``/predict`` is answered without those layers. ``install`` makes this protocol the
one uvicorn's ``http="auto"`` picks; the service calls it at import, before BentoML's worker
builds its server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from conveyor.serving.gate import Front, Gate

__all__ = ["GuardedHttpTools", "install"]

log = logging.getLogger("conveyor.serving")


class GuardedHttpTools(HttpToolsProtocol):
    header_timeout: float = 10.0
    front: Front | None = None
    _gates: ClassVar[dict[int, Gate]] = {}  # one gate per application uvicorn serves

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.front is not None:
            app = self.app
            gate = self._gates.get(id(app))
            if gate is None:
                gate = self._gates[id(app)] = Gate(app, self.front)
            self.app = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(cast(asyncio.Transport, transport))  # a stream's transport, as asyncio gives it
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout, self._late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._late)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.info("closed a connection from %s: no request head within %g s", self.client, self.header_timeout)
            self.transport.close()


def install(header_timeout: float, front: Front) -> None:
    """Make uvicorn's ``auto`` and ``httptools`` protocols this one, with ``header_timeout`` and the gate."""
    from uvicorn import config

    GuardedHttpTools.header_timeout, GuardedHttpTools.front = header_timeout, front
    config.HTTP_PROTOCOLS["auto"] = config.HTTP_PROTOCOLS["httptools"] = "conveyor.serving.transport:GuardedHttpTools"
