"""Where a served model runs: one interface in front of every runtime.

As httpx's ``BaseTransport`` is where a request goes (``httpx/_transports/base.py``: a client is
given one, and does not care whether it is a socket pool, a WSGI app or a mock), a
``ModelRuntime`` is where a verified release's model runs. The serving core verifies a release,
opens a runtime on the verified files (through a ``Loader``: ``serving.tabular.TabularLoader``,
``serving.releases.ReleaseLoader``), waits for it to load, sends it work, and closes it; what runs
underneath is the runtime's business:

- ``PredictRuntime``: a tabular model that answers rows (``serving.models.ModelProcess``: the
  estimator in a child process, with adaptive batching and the output contract);
- ``GenerateRuntime``: a language model that streams text (``serving.llm_process.ReleaseProcess``:
  llama.cpp in a child process). A remote model server is another implementation of it, in a
  module of its own.

Every runtime reports its own timings and token counts, measured where the work happens: a
``PredictRuntime``'s ``Answer`` carries the call's wall and CPU time in the model's process; a
``Generation`` ends with a ``Generated`` that carries the prompt and completion tokens, the time
to first token and the whole time. A runtime that fails raises ``ModelFailed`` with its kind
(error, timeout, crash, overload, contract); one that cannot load raises ``LoadRefused``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

__all__ = [
    "Answer",
    "GenerateRuntime",
    "Generated",
    "Generation",
    "Loader",
    "ModelRuntime",
    "PredictRuntime",
    "Request",
    "Served",
]

Request = list[dict[str, str]] | str  # chat turns, or a whole prompt (completion mode)


@dataclass(frozen=True)
class Generated:
    """A finished generation, counted and timed where it ran."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float  # request to first generated text
    total_ms: float
    finish_reason: str


@dataclass(frozen=True)
class Answer:
    """A tabular model's answer to one call."""

    values: np.ndarray  # one float per row, checked against the output contract
    model_ms: float  # the model's own time for the call that answered (wall clock, taken in its process)
    batch_rows: int  # rows in that call
    cpu_ms: float = 0.0  # the CPU time of that call in the model's process: what the canary analysis compares


class ModelRuntime(ABC):
    """A model being served. Opening one starts its load; ``wait_loaded`` blocks until it can
    answer (``LoadRefused`` when it cannot); ``close`` lets the work already given to it finish
    (for at most ``drain_seconds``), then stops it."""

    pid: int | None = None  # the process the model runs in, where it has one of its own

    @abstractmethod
    def wait_loaded(self, timeout: float = 120) -> None: ...

    @abstractmethod
    def close(self, drain_seconds: float = 10.0) -> None: ...


class PredictRuntime(ModelRuntime):
    """A tabular model: rows in, one value per row out."""

    @abstractmethod
    async def predict(self, rows: list[dict[str, Any]]) -> Answer:
        """The model's answer for ``rows``, checked against its output contract."""

    @abstractmethod
    async def time_call(self, rows: list[dict[str, Any]]) -> float:
        """The model's own time (ms) for ``rows``, its answer unused: the canary analysis' paired reference."""


class Generation(ABC):
    """One answer being generated: iterate it for text pieces, then one ``Generated`` with the
    counts. ``cancel`` stops it between two pieces and returns what was generated; ``close``
    (always, in a ``finally``) frees the runtime for the next request."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[str | Generated]: ...

    @abstractmethod
    async def cancel(self, timeout: float = 5.0) -> Generated | None: ...

    @abstractmethod
    async def close(self) -> None: ...


class GenerateRuntime(ModelRuntime):
    """A language model: a request in, a stream of text out, counted."""

    threads: int | None = None  # what it generates on, where it says so

    @abstractmethod
    async def begin(
        self, request: Request, params: dict[str, Any], *, first_token_seconds: float, total_seconds: float
    ) -> Generation:
        """Start generating (``ModelFailed`` "overload" when too many wait): no first piece within
        ``first_token_seconds``, or no end within ``total_seconds``, is a ``ModelFailed`` "timeout"."""

    def set_threads(self, threads: int) -> None:
        """Generate on ``threads`` threads from the next token on (runtimes that share the cores)."""


R = TypeVar("R", bound=ModelRuntime)


class Served(Generic[R]):
    """A verified version and the runtime its model runs in: what the core routes requests to."""

    def __init__(self, verified: Any, runtime: R) -> None:
        self.verified = verified  # VerifiedModel or VerifiedRelease: name, version, version_digest, signer, discard()
        self.runtime = runtime
        self.deployment: str | None = None  # the ledger's name for this deployment, once recorded

    def describe(self) -> dict[str, Any]:
        v = self.verified
        return {"name": v.name, "version": v.version, "version_digest": v.version_digest, "signer": v.signer}

    def close(self) -> None:
        """Stop the runtime (its work in hand finishes first) and remove the verified copy."""
        self.runtime.close()
        self.verified.discard()


class Loader(Protocol[R]):
    """What differs by kind of model: how a version is verified and where it runs."""

    llm: bool  # metrics of an LLM release (else of a tabular model)
    judge_every: int  # canary answers between two judgements (every canary failure is judged at once)
    stopping_grace: float  # seconds a failed load waits to learn whether the service is stopping

    def verify(self, name: str, version: str, ledger: Any) -> Any:
        """``name/version`` verified into a folder of its own; ``LoadRefused`` when anything fails."""
        ...

    def open(self, verified: Any, role: str, timeout: float | None) -> R:
        """A runtime on the verified files (its load started)."""
        ...

    def fits(self, verified: Any) -> str | None:
        """Why ``verified`` cannot be the canary beside the champion (clients must be able to call both), or None."""
        ...

    def accepted(self, verified: Any) -> None:
        """``verified`` is the champion now (its request shape becomes the service's)."""
        ...

    def arranged(self, routed: list[Served[R]], fallback: Served[R] | None) -> None:
        """The models served changed (champion and canary take traffic; the fallback waits)."""
        ...

    def close(self) -> None: ...
