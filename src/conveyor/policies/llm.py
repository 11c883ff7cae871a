"""An LLM project (``assistant.yaml``): which weights, which prompt, how to generate, how to judge.

One YAML file, marked ``kind: llm``, names the model's weights (a file shipped in a Python
package, by sha256), the prompt template and the values of its variables, the generation
parameters and limits, the evaluation sets, the guardrail policy, the fallback release and the
price of tokens. Every mistake is one paragraph naming the field and the fix, as for a tabular
project (``policies/project.py``). Evaluation sets are JSONL files checked line by line here too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from conveyor.policies.errors import ConfigInvalid, DataInvalid
from conveyor.policies.guardrails import GuardrailPolicy
from conveyor.policies.loading import load_config, load_policy

__all__ = [
    "REQUEST_VARIABLES",
    "VARIABLE",
    "EvalCase",
    "Evaluation",
    "Expectations",
    "Generation",
    "Knowledge",
    "Limits",
    "LlmProject",
    "Part",
    "Pricing",
    "PromptSpec",
    "WeightsSource",
    "canonical_template",
    "is_llm_project",
    "load_llm_project",
    "read_eval_set",
    "template_variables",
]

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")  # a template variable: {{name}}
# Variables a request supplies (the gateway fills them per call); all others come from the config.
REQUEST_VARIABLES = frozenset({"question", "passages"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Part(_Strict):
    """One file of a model shipped in several packages (concatenated in order)."""

    package: str
    file: str


class WeightsSource(_Strict):
    """A GGUF file inside an installed distribution (or several, concatenated), pinned by sha256."""

    package: str
    file: str | None = None  # the file's path inside the distribution
    parts: tuple[Part, ...] = ()  # ... or the parts it is assembled from, in order
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    licence: str
    context: int = Field(2048, ge=256, le=32768)  # tokens the runtime allocates
    # chat: the template is the system turn, the question the user's (an instruction-tuned model);
    # completion: the template is the whole prompt around {{question}} (a base model, no chat turns).
    mode: Literal["chat", "completion"] = "chat"
    # llama.cpp's chat format, when the GGUF carries no chat template of its own (e.g. "gemma").
    chat_format: str | None = Field(None, pattern=r"^[a-z0-9_.-]+$")

    @model_validator(mode="after")
    def _one_way(self) -> WeightsSource:
        if (self.file is None) == (not self.parts):
            raise ValueError("give either `file` (one file in the package) or `parts` (files to concatenate)")
        return self


class PromptSpec(_Strict):
    """The template, registered in MLflow's prompt registry under ``name``."""

    name: str = Field(pattern=NAME, max_length=100)
    template: Path
    variables: dict[str, str] = {}


class Generation(_Strict):
    """Generation parameters, copied into the signed release."""

    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(96, ge=1, le=4096)
    seed: int = 0
    stop: tuple[str, ...] = ()


class Limits(_Strict):
    """What a request may ask for: the gateway enforces them, the evaluation checks them."""

    max_input_tokens: int = Field(512, ge=16)
    max_output_tokens: int = Field(256, ge=1)


class Evaluation(_Strict):
    sets: tuple[Path, ...] = Field(min_length=1)
    # Cases accepted from feedback (`conveyor feedback accept`): a set of its own, evaluated with the
    # others once it holds a case; its candidates wait beside it in <name>.candidates.jsonl.
    feedback: Path | None = None
    timeout_seconds: float = Field(900.0, gt=0)  # the whole evaluation, this machine


class Knowledge(_Strict):
    """The documents a release answers from: a folder of text files (DVC-tracked), checked, indexed
    for BM25 retrieval, the index signed as a file of the release."""

    documents: Path  # a folder of .md / .txt files, relative to the config's folder
    top_k: int = Field(2, ge=1, le=20)  # passages given to the model per question
    min_score: float = Field(1.0, ge=0)  # a best passage scoring below this: the question is outside the documents
    passage_words: int = Field(80, ge=10, le=2000)  # paragraphs are joined into passages of about this many words
    min_chars: int = Field(40, ge=1)  # a document shorter than this is refused (likely empty or a stub)
    max_chars: int = Field(100_000, ge=100)
    max_documents: int = Field(10_000, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> Knowledge:
        if self.min_chars >= self.max_chars:
            raise ValueError("`knowledge.min_chars` must be below `knowledge.max_chars`")
        return self


class Pricing(_Strict):
    """Price per 1,000 tokens (self-hosted models too: the machine's cost, as the team sets it)."""

    input_per_1k: float = Field(ge=0)
    output_per_1k: float = Field(ge=0)
    currency: str = "USD"


class LlmProject(_Strict):
    """A generative release: weights, prompt, parameters, evaluation, guardrails, fallback, price."""

    kind: Literal["llm"]
    name: str = Field(pattern=NAME, max_length=100)  # the registered model's name
    description: str = ""
    model: WeightsSource
    prompt: PromptSpec
    generation: Generation = Generation()
    limits: Limits = Limits()
    evaluation: Evaluation
    guardrails: Path
    fallback: str | None = Field(None, pattern=NAME)  # another release's registered name
    knowledge: Knowledge | None = None
    pricing: Pricing
    threads: int = Field(2, ge=1, le=64)
    settings: dict[str, Any] = {}  # read by conveyor's settings, not here
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> LlmProject:
        if self.fallback == self.name:
            raise ValueError("`fallback` names this release itself: name another release, or leave it out")
        if self.generation.max_tokens > self.limits.max_output_tokens:
            raise ValueError(
                f"`generation.max_tokens` ({self.generation.max_tokens}) is above `limits.max_output_tokens` "
                f"({self.limits.max_output_tokens}): lower one or raise the other"
            )
        return self

    def path(self, value: Path) -> Path:
        """``value`` as given (relative to the config's folder), made absolute."""
        base = self.source.parent if self.source else Path.cwd()
        return value if value.is_absolute() else base / value

    @property
    def template_text(self) -> str:
        return self.path(self.prompt.template).read_text(encoding="utf-8")


def template_variables(template: str) -> set[str]:
    """The ``{{name}}`` variables a template uses."""
    return set(VARIABLE.findall(template))


def is_llm_project(path: Path) -> bool:
    """Whether the project file at ``path`` says ``kind: llm`` (read cheaply, no validation)."""
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False
    return re.search(r"^kind:\s*['\"]?llm['\"]?\s*$", head, re.MULTILINE) is not None


def load_llm_project(path: str | Path) -> LlmProject:
    """Read and check an LLM project config, its template's variables and its files' presence."""
    path = Path(path).absolute()
    missing = "Create one (see assistant.yaml in Conveyor's repository), or pass --config."
    project = load_config(
        path, LlmProject, what="LLM project", example="the demo's assistant.yaml", missing_hint=missing
    )
    _check_files(project, path)

    load_policy(project.path(project.guardrails), GuardrailPolicy)  # fail closed: a broken policy stops here
    return project


def _check_files(project: LlmProject, path: Path) -> None:
    for field, value in (("prompt.template", project.prompt.template), ("guardrails", project.guardrails)):
        if not project.path(value).is_file():
            raise ConfigInvalid(
                f"{path}: `{field}` names {value}, and there is no file at {project.path(value)}.",
                hint="Fix the path (relative to the config's folder).",
            )
    for number, value in enumerate(project.evaluation.sets):
        if not project.path(value).is_file():
            raise ConfigInvalid(
                f"{path}: `evaluation.sets.{number}` names {value}, and there is no file at {project.path(value)}.",
                hint="Fix the path (relative to the config's folder), or restore the file (`dvc checkout`).",
            )
    used = template_variables(project.template_text)
    if project.knowledge is not None:
        folder = project.path(project.knowledge.documents)
        if not folder.is_dir():
            raise ConfigInvalid(
                f"{path}: `knowledge.documents` names {project.knowledge.documents}, and there is no folder at {folder}.",
                hint="Point it at the folder of documents (relative to the config's folder), or restore it (`dvc checkout`).",
            )
        if "passages" not in used:
            raise ConfigInvalid(
                f"{path}: the project has a knowledge base, and its template {project.prompt.template} has no "
                "{{passages}} for the retrieved passages to go into.",
                hint="Put {{passages}} where the model should read them, or remove `knowledge`.",
            )
    elif "passages" in used:
        raise ConfigInvalid(
            f"{path}: the template {project.prompt.template} uses {{{{passages}}}}, and the project has no "
            "`knowledge` section to retrieve them from.",
            hint="Add `knowledge: {documents: FOLDER}`, or remove {{passages}} from the template.",
        )
    supplied = set(project.prompt.variables) | REQUEST_VARIABLES
    missing = sorted(used - supplied)
    if missing:
        raise ConfigInvalid(
            f"{path}: the template {project.prompt.template} uses {', '.join('{{' + m + '}}' for m in missing)}, "
            f"which nothing supplies (`prompt.variables` has {', '.join(sorted(project.prompt.variables)) or 'none'}; "
            f"a request supplies {', '.join(sorted(REQUEST_VARIABLES))}).",
            hint=f"Add {', '.join(missing)} under `prompt.variables`, or remove it from the template.",
        )
    if project.model.mode == "completion" and "question" not in used:
        raise ConfigInvalid(
            f"{path}: `model.mode` is completion, so the template {project.prompt.template} is the whole prompt, "
            "and it has no {{question}} for the request to go into.",
            hint="Put {{question}} where the question belongs (e.g. `User: {{question}}\\nAssistant:`).",
        )
    unused = sorted(set(project.prompt.variables) - used)
    if unused:
        raise ConfigInvalid(
            f"{path}: `prompt.variables` sets {', '.join(unused)}, which the template never uses.",
            hint="Remove it, or use it in the template as {{" + unused[0] + "}}.",
        )


# -- evaluation sets -------------------------------------------------------------------------------


class Expectations(_Strict):
    """What a case's answer must show. Every key is optional; a case checks what it names."""

    regex: str | None = None  # the answer matches (re.search)
    json_schema: dict[str, Any] | None = None  # the answer is JSON valid against this schema
    contains: tuple[str, ...] = ()  # each appears (case-insensitive)
    not_contains: tuple[str, ...] = ()  # none appears (case-insensitive)
    refuse: bool | None = None  # true: must be refused or blocked; false: must not be
    max_tokens: int | None = Field(None, ge=1)  # the answer's token budget
    sources: tuple[str, ...] = ()  # documents (ids, e.g. "canary.md") of which one must be among the passages used

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression ({exc})") from None
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON schema ({exc.message})") from None
        return value


class EvalCase(_Strict):
    id: str = Field(pattern=NAME, max_length=100)
    question: str = Field(min_length=1, max_length=8000)
    expect: Expectations = Expectations()
    tags: tuple[str, ...] = ()


def read_eval_set(path: Path, *, limit: int = 10_000) -> list[EvalCase]:
    """The cases of one JSONL file; any malformed line is a ``DataInvalid`` naming file and line."""
    problems: list[str] = []
    cases: list[EvalCase] = []
    seen: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataInvalid(
            f"{path} is not UTF-8 text ({exc}).", hint="Save the evaluation set as UTF-8 JSONL."
        ) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            case = EvalCase.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "(the line)"
            problems.append(f"line {number}: `{where}`: {first['msg'].removeprefix('Value error, ')}")
            continue
        if case.id in seen:
            problems.append(f"line {number}: id {case.id!r} is already used on line {seen[case.id]}")
        seen[case.id] = number
        cases.append(case)
        if len(problems) >= 5:
            break
    if problems:
        raise DataInvalid(
            f"{path} has malformed cases: {'; '.join(problems)}.",
            hint='Each line is one JSON object: {"id": "…", "question": "…", "expect": {…}}. Nothing was evaluated.',
        )
    if not cases:
        raise DataInvalid(
            f"{path} holds no cases.", hint="Add at least one JSON line, or remove the set from the config."
        )
    if len(cases) > limit:
        raise DataInvalid(f"{path} holds {len(cases)} cases, more than {limit}.", hint="Split or sample the set.")
    return cases


def canonical_template(text: str) -> str:
    """The template as registered: line endings normalised, trailing whitespace at the end removed."""
    return text.replace("\r\n", "\n").rstrip() + "\n"
