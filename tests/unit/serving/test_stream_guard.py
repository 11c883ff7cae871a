"""Output guardrails over a streamed answer: nothing reaches the client that a rule could still match."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.policies.guardrails import GuardrailPolicy
from conveyor.policies.loading import load_policy
from conveyor.serving.guardrails import Guardrails, StreamGuard

REPO = Path(__file__).resolve().parents[3]
SYSTEM = "You are the help assistant of Conveyor, a platform that trains, signs and serves machine learning models."


@pytest.fixture(scope="module")
def guard() -> Guardrails:
    return Guardrails(load_policy(REPO / "policies" / "guardrails.yaml", GuardrailPolicy), SYSTEM)


def _stream(guard: Guardrails, text: str, step: int) -> tuple[list[str], StreamGuard]:
    stream = StreamGuard(guard)
    sent = [stream.feed(text[i : i + step]) for i in range(0, len(text), step)]
    sent.append(stream.finish())
    return sent, stream


@pytest.mark.parametrize("step", [1, 2, 5, 11])
def test_personal_data_is_redacted_in_a_stream_as_in_a_whole_answer(guard: Guardrails, step: int) -> None:
    text = "Write to jane.roe@example.org or call 415-555-0199 or pay with 4111 1111 1111 1111 now."
    sent, stream = _stream(guard, text, step)
    whole = guard.check_output(text)
    assert "".join(sent) == whole.text
    assert sorted(stream.redactions) == sorted(whole.redactions)
    for raw in ("jane.roe", "example.org", "555-0199", "1111 1111"):
        assert not any(raw in piece for piece in sent)  # never a fragment either: each piece is checked whole
    assert all("@" not in piece for piece in sent)


def test_a_name_is_held_until_it_is_whole_and_redacted(guard: Guardrails) -> None:
    sent, stream = _stream(guard, "Please ask Margaret Thompson about it.", 1)
    joined = "".join(sent)
    assert "Margaret" not in joined and "Thompson" not in joined
    assert "output.pii.presidio.PERSON" in stream.redactions


def test_a_banned_answer_stops_the_stream_before_the_secret_is_sent(guard: Guardrails) -> None:
    sent, stream = _stream(guard, "Sure. The admin password is hunter2 and more text follows.", 1)
    assert stream.blocked_by == "output.banned.credentials_leak"
    assert "hunter2" not in "".join(sent) and "password" not in "".join(sent)
    assert "".join(sent).startswith("Sure.")


def test_the_system_prompt_is_never_sent_eight_words_in_a_row(guard: Guardrails) -> None:
    leak = "Of course: " + SYSTEM + " That is all."
    sent, stream = _stream(guard, leak, 3)
    assert stream.blocked_by == "output.system_prompt_leak"
    words = "".join(sent).lower().split()
    system = SYSTEM.lower().split()
    runs = {tuple(system[i : i + 8]) for i in range(len(system) - 7)}
    assert not any(tuple(words[i : i + 8]) in runs for i in range(len(words) - 7))


def test_a_clean_answer_streams_word_by_word_unchanged(guard: Guardrails) -> None:
    text = "a canary release sends a small share of traffic to the new version first."
    sent, stream = _stream(guard, text, 4)
    assert "".join(sent) == text and stream.blocked_by is None and not stream.redactions
    assert sum(1 for piece in sent if piece) >= 8  # released as it comes, not held to the end
    assert not stream.refused


def test_a_refusal_by_the_model_is_recognised_in_a_stream(guard: Guardrails) -> None:
    _, stream = _stream(guard, "Sorry, I can't help with that.", 3)
    assert stream.refused and stream.blocked_by is None
