"""A header deadline for uvicorn's HTTP protocol: a client that has not sent a whole request head in
``header_timeout`` seconds (after connecting, or after its first byte of a request) is disconnected.

uvicorn times out idle keep-alive connections but not half-sent heads, so a slow client could
hold a connection (and its buffer) for ever. ``install`` makes this protocol the one uvicorn's
``http="auto"`` picks; the service calls it at import, before BentoML's worker builds its server.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["GuardedHttpTools", "install"]

log = logging.getLogger("conveyor.serving")


class GuardedHttpTools(HttpToolsProtocol):
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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


def install(header_timeout: float) -> None:
    """Make uvicorn's ``auto`` and ``httptools`` protocols this one, with ``header_timeout``."""
    from uvicorn import config

    GuardedHttpTools.header_timeout = header_timeout
    config.HTTP_PROTOCOLS["auto"] = config.HTTP_PROTOCOLS["httptools"] = "serving.transport:GuardedHttpTools"
