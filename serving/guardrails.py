"""Guardrails: the release's rules applied around the model, fail-closed.

``Guardrails(policy, system_prompt)`` checks a request before the model sees it and an answer
before anyone else does. Every block or redaction names the rule that fired, so it can be
counted and recorded. Rules are regular expressions from ``policies/guardrails.yaml``; they are
compiled once.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from policies.guardrails import GuardrailPolicy

__all__ = ["Guardrails", "InputVerdict", "OutputVerdict"]

# Zero-width, joiner, bidirectional-override and other format characters used to hide instructions.
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]")
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class InputVerdict:
    text: str  # normalised, invisible characters removed
    blocked_by: str | None = None  # "input.injection.<rule>", "input.secrets.<rule>", "input.max_chars"
    stripped: int = 0  # invisible characters removed

    @property
    def blocked(self) -> bool:
        return self.blocked_by is not None


@dataclass(frozen=True)
class OutputVerdict:
    text: str  # what the client may see
    blocked_by: str | None = None  # "output.banned.<rule>", "output.system_prompt_leak"
    redactions: tuple[str, ...] = ()  # "output.pii.<kind>" per redaction
    refused: bool = False  # the model refused by itself (refusal_patterns)

    @property
    def blocked(self) -> bool:
        return self.blocked_by is not None


@dataclass
class Guardrails:
    policy: GuardrailPolicy
    system_prompt: str = ""
    _compiled: dict[str, list[tuple[str, re.Pattern[str]]]] = field(default_factory=dict, repr=False)
    _shingles: set[tuple[str, ...]] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        p = self.policy

        def compile_all(prefix: str, patterns: dict[str, str]) -> list[tuple[str, re.Pattern[str]]]:
            return [(f"{prefix}.{name}", re.compile(rule, re.IGNORECASE)) for name, rule in patterns.items()]

        self._compiled = {
            "injection": compile_all("input.injection", p.input.injection),
            "secrets": compile_all("input.secrets", p.input.secrets),
            "banned": compile_all("output.banned", p.output.banned),
            "refusal": compile_all("refusal", p.refusal_patterns),
        }
        self._pii = [
            (f"output.pii.{kind}", re.compile(rule.pattern, re.IGNORECASE), rule.replacement)
            for kind, rule in p.output.pii.items()
        ]
        words = _WORD.findall(self.system_prompt.lower())
        n = p.output.system_prompt_leak_words
        self._shingles = {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}

    def check_input(self, text: str) -> InputVerdict:
        rules = self.policy.input
        if rules.normalise != "none":
            text = unicodedata.normalize(rules.normalise, text)
        stripped = 0
        if rules.strip_invisible:
            text, stripped = _INVISIBLE.subn("", text)
        if len(text) > rules.max_chars:
            return InputVerdict(text, "input.max_chars", stripped)
        for name, pattern in self._compiled["injection"] + self._compiled["secrets"]:
            if pattern.search(text):
                return InputVerdict(text, name, stripped)
        return InputVerdict(text, None, stripped)

    def check_output(self, text: str) -> OutputVerdict:
        for name, pattern in self._compiled["banned"]:
            if pattern.search(text):
                return OutputVerdict(self.policy.refusal, name)
        if self._leaks(text):
            return OutputVerdict(self.policy.refusal, "output.system_prompt_leak")
        redactions: list[str] = []
        for name, pattern, replacement in self._pii:
            text, count = pattern.subn(replacement, text)
            redactions += [name] * count
        refused = any(p.search(text) for _, p in self._compiled["refusal"])
        return OutputVerdict(text, None, tuple(redactions), refused)

    def _leaks(self, text: str) -> bool:
        if not self._shingles:
            return False
        words = _WORD.findall(text.lower())
        n = self.policy.output.system_prompt_leak_words
        return any(tuple(words[i : i + n]) in self._shingles for i in range(len(words) - n + 1))
