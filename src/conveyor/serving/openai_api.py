"""The OpenAI API's shapes, as the gateway speaks them: requests checked field by field, responses,
stream chunks and errors built the way the official clients read them.

A request is refused with a 400 that names the field (``param``), in OpenAI's error shape, for
anything the release cannot honour: an unknown model, a role other than user and assistant (the
release's signed prompt is the system prompt), ``n`` other than 1, ``max_tokens`` above the
release's limit, a temperature outside [0, 2]. Every other field of OpenAI's request schemas is
either honoured, accepted because it does not change the answer (``metadata``, ``store``,
``service_tier``, ...), or refused by name unless it is at its no-op value (``tools``,
``tool_choice``, ``response_format`` other than text, ``logprobs``, penalties, ``logit_bias``,
...): a client that asked for JSON or a tool call never gets a 200 with free text. A field that
is in neither schema is refused too, as OpenAI refuses it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from conveyor.policies.errors import RequestRefused

__all__ = [
    "NOT_HONOURED",
    "NO_EFFECT",
    "ChatRequest",
    "CompletionRequest",
    "Message",
    "RequestRefused",
    "StreamOptions",
    "TextPart",
    "chunk",
    "completion_body",
    "error_body",
    "now",
    "parse_request",
    "sse",
]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TextPart(_Lenient):
    type: Literal["text"]
    text: str = Field(max_length=100_000)


class Message(_Lenient):
    role: str
    content: str | list[TextPart] | None = Field(None)

    @field_validator("role")
    @classmethod
    def _role(cls, role: str) -> str:
        if role in ("system", "developer"):
            raise ValueError(
                "system and developer messages are not taken: the release's signed prompt is its system prompt; "
                "send the question as a user message"
            )
        if role not in ("user", "assistant"):
            raise ValueError(f"role must be user or assistant, not {role[:20]!r}")
        return role

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Lenient):
    include_usage: bool = False


class _Generation(_Lenient):
    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    user: str | None = Field(None, max_length=200)

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop
        if stops is not None and (len(stops) > 4 or any(not s or len(s) > 100 for s in stops)):
            raise ValueError("at most 4 stop sequences, each 1 to 100 characters")
        return stops

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1, max_length=64)

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[Message]) -> list[Message]:
        if messages[-1].role != "user":
            raise ValueError("the last message must be the user's")
        return messages


class CompletionRequest(_Generation):
    prompt: str = Field(max_length=100_000)


def _off(*values: Any) -> Callable[[Any], bool]:
    return lambda value: value is None or value in values


# Fields of OpenAI's request schemas that the gateway does not honour, each with the test for its
# no-op value (accepted); any other value is refused, naming the field and why.
NOT_HONOURED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tools": (_off([]), "tool calls are not supported by this release"),
    "tool_choice": (_off("none", "auto"), "tool calls are not supported by this release"),
    "functions": (_off([]), "function calls are not supported by this release"),
    "function_call": (_off("none", "auto"), "function calls are not supported by this release"),
    "response_format": (
        lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
        "only the text response format is supported (no JSON mode or JSON schema)",
    ),
    "logprobs": (_off(False, 0), "log probabilities are not returned"),
    "top_logprobs": (_off(0), "log probabilities are not returned"),
    "logit_bias": (lambda v: not v, "logit bias is not supported"),
    "frequency_penalty": (_off(0), "frequency penalties are not supported"),
    "presence_penalty": (_off(0), "presence penalties are not supported"),
    "audio": (_off(), "audio output is not supported"),
    "modalities": (_off(["text"]), "only text output is supported"),
    "prediction": (_off(), "predicted outputs are not supported"),
    "reasoning_effort": (_off(), "the release's model does not reason on request"),
    "verbosity": (_off(), "verbosity is not supported"),
    "web_search_options": (_off(), "web search is not supported"),
    "moderation": (_off(), "OpenAI's moderation settings are not taken: the release's guardrail policy applies"),
    "best_of": (_off(1), "best_of other than 1 is not supported"),
    "echo": (_off(False), "echo is not supported"),
    "suffix": (_off(""), "suffix (insertion) is not supported"),
}
# Fields that do not change the answer: accepted, never passed on.
NO_EFFECT = frozenset(
    {
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "safety_identifier",
        "parallel_tool_calls",  # without tools (refused above) it changes nothing
    }
)


def parse_request(body: bytes, kind: type[_Generation]) -> Any:
    """The request in ``body``, or an ``RequestRefused`` 400 naming the first field at fault."""
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise RequestRefused(400, f"body: Invalid JSON ({exc})", param="body") from None
    if not isinstance(raw, dict):
        raise RequestRefused(400, "body: the request must be a JSON object", param="body")
    for name, value in raw.items():
        if name in kind.model_fields:
            continue
        if name in NO_EFFECT:
            continue
        refusal = NOT_HONOURED.get(name)
        if refusal is None:
            raise RequestRefused(400, f"{name}: not a field of this endpoint's request; remove it", param=name)
        no_op, why = refusal
        if not no_op(value):
            raise RequestRefused(400, f"{name}: {why}; remove it or send its default", param=name)
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "body"
        message = error["msg"].removeprefix("Value error, ")
        more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
        raise RequestRefused(400, f"{where}: {message}{more}", param=where) from None


def error_body(exc: RequestRefused) -> bytes:
    """A refusal in OpenAI's error shape (``type``, ``param``, ``code``)."""
    status = exc.http_status
    kind = exc.kind or {
        401: "authentication_error",
        403: "permission_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")
    error = {"message": str(exc), "type": kind, "param": exc.param, "code": exc.code}
    return json.dumps({"error": error}).encode()


def completion_body(
    *,
    request_id: str,
    model: str,
    created: int,
    text: str,
    finish_reason: str,
    usage: dict[str, int],
    chat: bool,
    conveyor: dict[str, Any],
) -> bytes:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return json.dumps(
        {
            "id": request_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage,
            "conveyor": conveyor,
        }
    ).encode()


def chunk(
    *,
    request_id: str,
    model: str,
    created: int,
    chat: bool,
    text: str | None = None,
    role: bool = False,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
    conveyor: dict[str, Any] | None = None,
    empty_choices: bool = False,
) -> bytes:
    """One server-sent event of a streamed answer."""
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
    }
    if empty_choices:
        body["choices"] = []
    else:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        body["choices"] = [choice]
    if usage is not None:
        body["usage"] = usage
    if conveyor is not None:
        body["conveyor"] = conveyor
    return sse(body)


def sse(body: dict[str, Any] | str) -> bytes:
    data = body if isinstance(body, str) else json.dumps(body)
    return f"data: {data}\n\n".encode()


def now() -> int:
    return int(time.time())
