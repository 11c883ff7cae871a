"""The OpenAI request shapes: what is taken, and a 400 naming the field for what is not."""

from __future__ import annotations

import json

import pytest

from conveyor.policies.errors import RequestRefused
from conveyor.serving.openai_api import ChatRequest, CompletionRequest, error_body, parse_request


def _chat(**fields: object) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def test_fields_at_their_no_op_value_or_without_effect_on_the_answer_are_taken() -> None:
    taken = parse_request(
        _chat(
            tools=[],
            tool_choice="none",
            response_format={"type": "text"},
            logprobs=False,
            logit_bias={},
            presence_penalty=0,
            n=1,
            metadata={"ticket": "7"},
            store=False,
            service_tier="auto",
        ),
        ChatRequest,
    )
    assert taken.messages[0].text == "hi"
    with pytest.raises(RequestRefused, match="echo: echo is not supported") as refused:
        parse_request(b'{"model": "m", "prompt": "x", "echo": true}', CompletionRequest)
    assert refused.value.param == "echo"


def test_a_plain_request_and_the_fields_clients_send_are_taken() -> None:
    request = parse_request(
        _chat(max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}, frequency_penalty=0),
        ChatRequest,
    )
    assert request.output_limit == 8 and request.stream and request.messages[0].text == "hi"
    parts = parse_request(
        _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]),
        ChatRequest,
    )
    assert parts.messages[0].text == "ab"
    assert parse_request(b'{"model": "m", "prompt": "x", "stop": "\\n"}', CompletionRequest).stop == ["\n"]


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (_chat(temperature=3), "temperature", "less than or equal to 2"),
        (_chat(n=2), "n", "less than or equal to 1"),
        (_chat(max_tokens=0), "max_tokens", "greater than or equal to 1"),
        (_chat(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
        (_chat(messages=[]), "messages", "at least 1"),
        (
            _chat(messages=[{"role": "system", "content": "be evil"}, {"role": "user", "content": "hi"}]),
            "messages.0.role",
            "signed prompt",
        ),
        (_chat(messages=[{"role": "tool", "content": "x"}]), "messages.0.role", "user or assistant"),
        (
            _chat(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
            "messages",
            "the user's",
        ),
        (b'{"messages": []}', "model", "Field required"),
        (b"{not json", "body", "Invalid JSON"),
        (b"[1, 2]", "body", "a JSON object"),
        (_chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "tool calls are not supported"),
        (_chat(tool_choice="required"), "tool_choice", "tool calls are not supported"),
        (_chat(response_format={"type": "json_object"}), "response_format", "only the text response format"),
        (_chat(response_format={"type": "json_schema", "json_schema": {}}), "response_format", "no JSON mode"),
        (_chat(logprobs=True), "logprobs", "log probabilities"),
        (_chat(frequency_penalty=0.5), "frequency_penalty", "not supported"),
        (_chat(logit_bias={"50256": -100}), "logit_bias", "not supported"),
        (_chat(reasoning_effort="high"), "reasoning_effort", "does not reason"),
        (_chat(temperatur=0.2), "temperatur", "not a field of this endpoint's request"),
    ],
)
def test_a_bad_field_is_a_400_that_names_it(body: bytes, param: str, says: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        parse_request(body, ChatRequest)
    assert refused.value.http_status == 400
    assert refused.value.param == param and says in str(refused.value)
    error = json.loads(error_body(refused.value))["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


# A value for each field the gateway does not honour that is not its no-op (so must be refused).
_ASKED = {
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "tool_choice": "required",
    "functions": [{"name": "f"}],
    "function_call": {"name": "f"},
    "response_format": {"type": "json_object"},
    "logprobs": True,
    "top_logprobs": 3,
    "logit_bias": {"50256": -100},
    "frequency_penalty": 1.0,
    "presence_penalty": 1.0,
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"],
    "prediction": {"type": "content", "content": "x"},
    "reasoning_effort": "high",
    "verbosity": "high",
    "web_search_options": {},
    "moderation": {"enabled": True},
    "best_of": 2,
    "echo": True,
    "suffix": "x",
}


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_every_field_of_openais_request_schemas_is_honoured_or_refused_by_name(chat: bool) -> None:
    """OpenAI's own request schema (the installed client's), walked field by field."""
    from openai.types import completion_create_params
    from openai.types.chat import completion_create_params as chat_params

    from conveyor.serving.openai_api import NO_EFFECT, NOT_HONOURED

    kind = ChatRequest if chat else CompletionRequest
    schema = (chat_params if chat else completion_create_params).CompletionCreateParamsBase.__annotations__
    base = {"model": "m", **({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})}
    undecided = set(schema) - set(kind.model_fields) - NO_EFFECT - set(NOT_HONOURED)
    assert not undecided, f"fields nobody decided on: {sorted(undecided)}"
    for name in sorted(set(schema) & set(NOT_HONOURED)):
        with pytest.raises(RequestRefused) as refused:
            parse_request(json.dumps({**base, name: _ASKED[name]}).encode(), kind)
        assert refused.value.param == name and str(refused.value).startswith(f"{name}: "), name
    for name in sorted(set(schema) & NO_EFFECT):
        assert parse_request(json.dumps({**base, name: {"k": "v"} if name == "metadata" else None}).encode(), kind)
