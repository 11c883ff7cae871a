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
from typing import Any

from conveyor.policies.guardrails import GuardrailPolicy, PresidioRules

__all__ = [
    "Guardrails",
    "InputVerdict",
    "OutputVerdict",
    "Presidio",
    "Span",
    "StreamGuard",
]

# Zero-width, joiner, bidirectional-override and other format characters used to hide instructions.
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]")
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class InputVerdict:
    text: str  # normalised, invisible characters removed
    blocked_by: str | None = None  # "input.injection.<rule>", "input.secrets.<rule>", "input.max_chars"
    stripped: int = 0  # invisible characters removed
    redactions: tuple[str, ...] = ()  # "input.pii.<kind>" per redaction (the model saw the placeholder)

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


class Presidio:
    """Presidio's analyzer on a spaCy model that is installed as a package: loaded once per model
    (~4 s, most of it spaCy), ~13 ms a check. A model that cannot load stops the release from
    loading (fail closed), it is never skipped."""

    _loaded: dict[str, Any] = {}  # noqa: RUF012 - one analyzer per model name, shared by every release

    def __init__(self, rules: PresidioRules, analyzer: Any) -> None:
        self.rules = rules
        self.analyzer = analyzer
        self.allow = frozenset(rules.allow)

    @classmethod
    def load(cls, rules: PresidioRules) -> Presidio:
        analyzer = cls._loaded.get(rules.model)
        if analyzer is None:
            import logging

            # It warns once per recogniser of a language the registry does not load (es, it, pl...).
            logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
            from presidio_analyzer.nlp_engine import SpacyNlpEngine

            engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": rules.model}])
            engine.load()
            nlp: Any = engine.nlp["en"] if engine.nlp else None
            if (
                nlp is not None and "parser" in nlp.pipe_names
            ):  # the dependency parse is not read by any recogniser: ~40 % of a check
                nlp.disable_pipe("parser")
            registry = RecognizerRegistry(supported_languages=["en"])
            registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
            # Its e-mail recogniser looks up a public-suffix list on the network: the pattern rules
            # find e-mail addresses instead.
            registry.remove_recognizer("EmailRecognizer")
            analyzer = AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])
            cls._loaded[rules.model] = analyzer
        return cls(rules, analyzer)

    def spans(self, text: str) -> list[Span]:
        """What Presidio finds in ``text``, as spans to replace by ``[entity]``."""
        found = self.analyzer.analyze(
            text=text,
            language="en",
            entities=list(self.rules.entities),
            score_threshold=self.rules.score_threshold,
            allow_list=list(self.rules.allow) or None,
        )
        return [
            Span(r.start, r.end, f"output.pii.presidio.{r.entity_type}", f"[{r.entity_type.lower()}]") for r in found
        ]


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int
    rule: str  # the rule that found it: output.pii.<kind> or output.pii.presidio.<ENTITY>
    replacement: str


@dataclass
class Guardrails:
    policy: GuardrailPolicy
    system_prompt: str = ""
    _compiled: dict[str, list[tuple[str, re.Pattern[str]]]] = field(default_factory=dict, repr=False)
    _presidio: Presidio | None = field(default=None, repr=False)
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
        self._presidio = Presidio.load(p.output.presidio) if p.output.presidio is not None else None
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
        if rules.pii == "redact":
            text, redactions = self.redact(text)
            return InputVerdict(text, None, stripped, tuple(r.replace("output.", "input.", 1) for r in redactions))
        return InputVerdict(text, None, stripped)

    def redact(self, text: str) -> tuple[str, list[str]]:
        """``text`` with its personal data replaced, and the rule of each replacement."""
        spans = self.pii_spans(text)
        for span in reversed(spans):  # from the end, so earlier offsets stay valid
            text = text[: span.start] + span.replacement + text[span.end :]
        return text, [span.rule for span in spans]

    def check_output(self, text: str) -> OutputVerdict:
        for name, pattern in self._compiled["banned"]:
            if pattern.search(text):
                return OutputVerdict(self.policy.refusal, name)
        if self._leaks(text):
            return OutputVerdict(self.policy.refusal, "output.system_prompt_leak")
        text, redactions = self.redact(text)
        refused = any(p.search(text) for _, p in self._compiled["refusal"])
        return OutputVerdict(text, None, tuple(redactions), refused)

    def pii_spans(self, text: str) -> list[Span]:
        """Personal data in ``text`` by every rule, overlaps resolved in favour of the longer span
        (a card number is not also three phone numbers), in order."""
        found = [
            Span(m.start(), m.end(), name, replacement)
            for name, pattern, replacement in self._pii
            for m in pattern.finditer(text)
            if m.end() > m.start()
        ]
        if self._presidio is not None and _worth_a_look(text, self._presidio.allow):
            found += self._presidio.spans(text)
        kept: list[Span] = []
        for span in sorted(found, key=lambda s: (s.start - s.end, s.start)):  # longest first
            if all(span.end <= k.start or span.start >= k.end for k in kept):
                kept.append(span)
        return sorted(kept)

    def _leaks(self, text: str) -> bool:
        if not self._shingles:
            return False
        words = _WORD.findall(text.lower())
        n = self.policy.output.system_prompt_leak_words
        return any(tuple(words[i : i + n]) in self._shingles for i in range(len(words) - n + 1))


_CAPITALISED_TAIL = re.compile(r"(?:\b[A-Z][\w'-]*\s*)+$")  # a name may still be growing
_HOLD_CONTEXT = 200  # characters before the unsent text that the rules see again (a match may start there)


class StreamGuard:
    """The output rules over an answer that is streamed: text goes to the client only once no rule
    can still match it.

    ``feed`` takes each piece as the model makes it and returns what may be sent now: text up to
    the last word boundary, less any tail that a banned pattern or a personal-data pattern could
    still grow into (``regex`` partial matches) or that is a run of capitalised words (a name
    Presidio may only see whole). Personal data found in what is sent is redacted first. A banned
    match, or the system prompt's words as many in a row as the policy counts as a leak, block
    the answer before that text is sent: nothing more is (``blocked_by`` names the rule); fewer
    words in a row are no leak, so they need not wait. ``finish`` checks and returns the rest once
    the model is done.
    """

    def __init__(self, guardrails: Guardrails) -> None:
        import regex

        self.guardrails = guardrails
        flags = regex.IGNORECASE
        self._banned = [(name, regex.compile(p.pattern, flags)) for name, p in guardrails._compiled["banned"]]
        self._pii = [(name, regex.compile(p.pattern, flags), r) for name, p, r in guardrails._pii]
        self.text = ""  # the model's own text so far
        self.sent = 0  # characters of ``text`` checked and sent
        self.shown: list[str] = []  # what the client was sent
        self.redactions: list[str] = []
        self.blocked_by: str | None = None

    def feed(self, piece: str) -> str:
        self.text += piece
        return self._release(final=False)

    def finish(self) -> str:
        return self._release(final=True)

    @property
    def refused(self) -> bool:
        return self.blocked_by is not None or any(
            p.search("".join(self.shown)) for _, p in self.guardrails._compiled["refusal"]
        )

    def _release(self, *, final: bool) -> str:
        if self.blocked_by is not None:
            return ""
        text, start = self.text, self.sent
        end = len(text)
        if not final:
            boundary = max(text.rfind(" ", start), text.rfind("\n", start))
            end = boundary + 1 if boundary >= 0 else start
        window = max(0, start - _HOLD_CONTEXT)
        for name, pattern in self._banned:
            for m in pattern.finditer(text, window, partial=not final):
                if not m.partial:
                    return self._block(name)
                end = min(end, m.start())
        if self._leaks(text, window):
            return self._block("output.system_prompt_leak")
        if not final:
            tail = _CAPITALISED_TAIL.search(text, start, end)
            allow = self.guardrails._presidio.allow if self.guardrails._presidio is not None else frozenset()
            if tail is not None and _worth_a_look(tail.group(), allow):  # not "The" or "A": a name may follow
                end = min(end, tail.start())
        spans: list[Span] = []
        for name, pattern, replacement in self._pii:
            for m in pattern.finditer(text, window, partial=not final):
                if m.partial or (not final and m.end() >= len(text)):  # it may still grow: hold it back
                    end = min(end, m.start())
                elif m.end() > m.start():
                    spans.append(Span(m.start(), m.end(), name, replacement))
        if end <= start:
            return ""
        presidio = self.guardrails._presidio
        if presidio is not None and _worth_a_look(text[start:end], presidio.allow):
            spans += [
                Span(window + s.start, window + s.end, s.rule, s.replacement) for s in presidio.spans(text[window:end])
            ]
        kept: list[Span] = []
        for span in sorted(spans, key=lambda s: (s.start - s.end, s.start)):  # longest first
            if span.end > start and all(span.end <= k.start or span.start >= k.end for k in kept):
                kept.append(span)
        out, cursor = [], start
        for span in sorted(kept):
            if span.start >= end:
                continue
            out.append(text[cursor : max(cursor, span.start)])
            out.append(span.replacement)
            self.redactions.append(span.rule)
            cursor = max(cursor, span.end)
        if cursor < end:
            out.append(text[cursor:end])
        self.sent = max(end, cursor)
        released = "".join(out)
        self.shown.append(released)
        return released

    def _block(self, rule: str) -> str:
        self.blocked_by = rule
        return ""

    def _leaks(self, text: str, window: int) -> bool:
        if not self.guardrails._shingles:
            return False
        words = _WORD.findall(text[window:].lower())
        n = self.guardrails.policy.output.system_prompt_leak_words
        return any(tuple(words[i : i + n]) in self.guardrails._shingles for i in range(len(words) - n + 1))


_CAPITALISED = re.compile(r"\b[A-Z][\w'-]*")


def _worth_a_look(text: str, allow: frozenset[str] = frozenset()) -> bool:
    """Whether Presidio could find anything in ``text``: its entities (names, numbers, addresses)
    need a digit or a capitalised word that is not a common English word ("The", "In": spaCy's
    stop words) nor on the policy's allow list. Most sentences an assistant writes have neither,
    and skip the model's ~10 ms."""
    if any(c.isdigit() for c in text):
        return True
    from spacy.lang.en.stop_words import STOP_WORDS

    return any(m.group().lower() not in STOP_WORDS and m.group() not in allow for m in _CAPITALISED.finditer(text))
