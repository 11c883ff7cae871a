"""A chat or completion request made ready for one release: what its model is given.

The release's input guardrails run on every user turn (normalised, invisible characters stripped,
injection and secret-seeking patterns blocked, personal data redacted), the client's text is
counted with the release's tokenizer and capped at its limit (400 past it), the generation
parameters are the release's with the client's overrides, and the knowledge base's passages for
the last question go into the system prompt. The reservation's ceiling of the prompt's tokens is
counted here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.policies.errors import RequestRefused
from conveyor.serving.llm import model_request as llm_model_request
from conveyor.serving.releases import VerifiedRelease

__all__ = ["MESSAGE_OVERHEAD", "Prepared", "prepare"]

MESSAGE_OVERHEAD = 8  # tokens a chat template adds per message at most (role markers): reserved, then settled


@dataclass(frozen=True)
class Prepared:
    """A request made ready for one release: what its model is given, and what was counted and found."""

    request: list[dict[str, str]] | str
    params: dict[str, Any]
    question: str  # the last user message after the input guardrails (what is logged)
    blocked_by: str | None
    redactions: tuple[str, ...]
    input_tokens: int  # the client's text, by the release's tokenizer
    reserve_tokens: int  # a ceiling of the prompt's tokens, for the reservation
    passages: tuple[dict[str, Any], ...] = ()  # the knowledge base's passages given to the model
    retrieval_score: float | None = None  # the best passage's score (None: no knowledge base)


def prepare(request: Any, release: VerifiedRelease, chat: bool) -> Prepared:
    """The request as ``release``'s model is given it, after its input guardrails and token cap."""
    guardrails = release.guardrails
    turns = [(m.role, m.text) for m in request.messages] if chat else [("user", request.prompt)]
    checked_turns: list[dict[str, str]] = []
    redactions: list[str] = []
    blocked_by = None
    input_tokens = 0
    for role, text in turns:
        if role == "user":
            verdict = guardrails.check_input(text)
            blocked_by = blocked_by or verdict.blocked_by
            redactions += verdict.redactions
            text = verdict.text
        input_tokens += release.count(text)
        checked_turns.append({"role": role, "content": text})
    question = checked_turns[-1]["content"]
    cap = int(release.limits["max_input_tokens"])
    if blocked_by is None and input_tokens > cap:
        raise RequestRefused(
            400,
            f"messages: the input is {input_tokens} tokens; {release.name} takes at most {cap}",
            param="messages",
            code="context_length_exceeded",
        )
    params = dict(release.manifest["generation"])
    for name in ("temperature", "top_p", "seed"):
        if getattr(request, name) is not None:
            params[name] = getattr(request, name)
    if request.stop is not None:
        params["stop"] = request.stop
    params["max_tokens"] = min(
        request.output_limit or int(params.get("max_tokens", 96)), int(release.limits["max_output_tokens"])
    )
    retrieved = release.retriever.search(question) if release.retriever is not None and blocked_by is None else None
    model_request = llm_model_request(release.template, release.manifest, question, retrieved)
    if isinstance(model_request, str):
        reserve = release.count(model_request) + MESSAGE_OVERHEAD
    else:
        system = model_request[0]["content"]
        model_request = [model_request[0], *checked_turns]
        reserve = release.count(system) + input_tokens + MESSAGE_OVERHEAD * (len(checked_turns) + 2)
    return Prepared(
        model_request,
        params,
        question,
        blocked_by,
        tuple(redactions),
        input_tokens,
        reserve,
        tuple(p.record() for p in retrieved.passages) if retrieved else (),
        retrieved.best_score if retrieved else None,
    )
