"""The service's front door: every path it answers, who may call it, and the limits checked before any work.

An ASGI application wrapped around BentoML's whole app (by ``serving.transport``, at the
connection: before BentoML's tracing, metrics and routing). For each request it looks only at the path and the
headers first: an unknown path is a 404, a missing or wrong key a 401 (a 429 once an address has
sent too many wrong keys), a body over ``max_body_bytes`` by its ``Content-Length`` a 413, any
content type but JSON a 415, all before a byte of the body is read. Then the body is read within
``body_timeout_seconds`` and the size limit (408 or 413, the connection closed), and only then
parsed. The front end's own paths (``POST /predict``, or the OpenAI API's) are answered here, by
the front end (no framework in between); the admin API, ``/metrics`` and the health checks go on
to BentoML once admitted.

Paths without a key: ``/livez`` and ``/readyz`` (orchestrators' probes) and nothing else.
BentoML's index page, static assets, ``/schema.json`` and its docs are not served at all; the
OpenAPI document of ``/predict`` is ``/docs.json``, for admin keys (or off, by policy).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.policies.errors import RequestRefused
from conveyor.serving.openai_api import error_body

if TYPE_CHECKING:
    from conveyor.serving.auth import Role
    from conveyor.serving.core import ServingCore

__all__ = ["OPEN_PATHS", "Endpoint", "Front", "Gate"]

log = logging.getLogger("conveyor.serving")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/readyz"})  # the only paths answered without a key
_JSON = b"application/json"
_BENTOML_PATHS = frozenset({"/metrics", "/docs.json"})  # known to a front end, answered by BentoML or the gate


class Endpoint(Protocol):
    """A front end on the serving core: ``serving.tabular.TabularEndpoint`` or ``serving.gateway.Gateway``."""

    paths: dict[str, set[str]]  # every path it answers, with its methods
    core: ServingCore[Any]

    async def handle(self, path: str, body: bytes, caller: Role, receive: Receive, send: Send) -> bytes | None:
        """The body of a 200 to ``path``; None when the answer was written to ``send`` already."""
        ...

    def document(self) -> dict[str, Any]:
        """Its OpenAPI document (``/docs.json``)."""
        ...


@dataclass
class Front:
    """What the gate needs from the service, set once the worker's front end exists."""

    endpoint: Endpoint | None = None


class _Disconnected(Exception):
    pass


class Gate:
    def __init__(self, app: Callable[..., Awaitable[None]], front: Front) -> None:
        self.app, self.front = app, front

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan
            return
        path, method = scope["path"], scope["method"]
        if path in OPEN_PATHS and method in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        admin = path.startswith("/admin/") or path == "/docs.json"
        openai = path.startswith("/v1/")
        try:
            endpoint = self.front.endpoint
            if endpoint is None:
                raise RequestRefused(503, "the service is starting")
            await self._serve(endpoint, scope, receive, send, path, method, admin)
        except RequestRefused as exc:
            if openai:  # the OpenAI clients read their own error shape
                await _send(send, exc.http_status, error_body(exc), close=exc.close)
            else:
                await _reply(send, exc.http_status, {"detail" if admin else "error": str(exc)}, close=exc.close)
        except _Disconnected:
            client = scope.get("client") or ("?", 0)
            log.info("client %s:%s disconnected before its request was read", *client)
        except Exception:  # a fault of ours: said, logged, never a hung connection
            log.exception("the gate failed on %s %s", method, path[:100])
            await _reply(send, 500, {"detail" if admin else "error": "internal error; see the service log"})

    async def _serve(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send, path: str, method: str, admin: bool
    ) -> None:
        known = endpoint.paths
        if not admin and path not in known:
            raise RequestRefused(404, f"no such path: {path[:100]}")
        if path in known and method not in known[path]:
            raise RequestRefused(405, f"{path} takes {' or '.join(sorted(known[path]))}, not {method[:10]}")
        headers = dict(scope["headers"])
        policy = endpoint.core.serving
        _declared_size(headers, policy.max_body_bytes)  # the cheapest refusal first: no key needed to be told
        client = (scope.get("client") or ("?", 0))[0]
        role = endpoint.core.access.authorize(_token(headers), admin=admin, client=client)
        if path == "/docs.json" and policy.docs == "off":
            raise RequestRefused(404, "the API's document is off (policies/serving.yaml: docs)")
        body = b""
        if method == "POST":
            body = await _body(receive, headers, policy.max_body_bytes, policy.body_timeout_seconds)
        if path in known and path not in _BENTOML_PATHS:
            answer = await endpoint.handle(path, body, role, receive, send)
            if answer is not None:
                await _send(send, 200, answer)
            return
        if path == "/docs.json":
            await _reply(send, 200, endpoint.document())
            return
        if method == "POST":
            receive = _replay(body)
        await self.app(scope, receive, send)


def _token(headers: dict[bytes, bytes]) -> str | None:
    if key := headers.get(b"x-api-key"):
        return key.decode("latin-1").strip()
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


async def _body(receive: Receive, headers: dict[bytes, bytes], limit: int, timeout: float) -> bytes:
    """The whole body, if it is JSON (or empty), within ``limit`` bytes and ``timeout`` seconds."""
    declared = headers.get(b"content-length")
    kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if kind != _JSON and not (declared == b"0" or (declared is None and kind == b"")):
        shown = kind.decode("latin-1")[:60] or "none"
        raise RequestRefused(415, f"the body must be JSON (Content-Type: application/json), not {shown}", close=True)
    chunks, size = [], 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise RequestRefused(408, f"the body was not sent within {timeout:g} s", close=True) from None
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestRefused(413, f"the body is over the limit of {limit:,} bytes", close=True)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _declared_size(headers: dict[bytes, bytes], limit: int) -> None:
    """413 for a body whose declared length is over ``limit``, before anything is read."""
    declared = headers.get(b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestRefused(400, "Content-Length is not a number", close=True)
        if int(declared) > limit:
            raise RequestRefused(413, f"the body is {int(declared):,} bytes; the limit is {limit:,}", close=True)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # as a connection that stays open: the app has what it needs
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _send(send: Send, status: int, body: bytes, *, close: bool = False) -> None:
    headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    if status == 429:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _reply(send: Send, status: int, content: Any, *, close: bool = False) -> None:
    await _send(send, status, json.dumps(content).encode(), close=close)
