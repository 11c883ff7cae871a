"""The inference log: every answered request, written off the request path, nothing lost on a clean stop.

``record`` only puts the entry on a queue; a writer thread batches entries into Parquet files
under ``<folder>/date=YYYY-MM-DD/`` (each written to a temporary name, then renamed, so a reader
never sees half a file). ``close`` drains the queue and writes what is left. Features are stored
one column each (``feature.<name>``), so monitoring can read a window as a table.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FeedbackRow", "InferenceLog", "LlmLogEntry", "LogEntry", "read_log"]

_STOP = object()
_REQUEST = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"  # a logged answer's id, as a rating names it


@dataclass(frozen=True)
class LogEntry:
    request_id: str
    time: datetime
    model: str
    version: str
    features: Mapping[str, Any]
    prediction: float
    served_by: str  # "champion" or "canary": who answered (after any fallback)
    row_index: int = 0  # the row's place in its request
    entity: str | None = None  # the project's entity key, when the client sent it
    event_time: str | None = None  # the row's own event time, when the client sent it
    deployment: str | None = None  # the ledger's digest of the deployment that answered
    flags: str | None = None  # what the service noticed about the row, e.g. "unknown:region"

    def row(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "row": self.row_index,
            "time": self.time,
            "model": self.model,
            "version": self.version,
            "prediction": self.prediction,
            "served_by": self.served_by,
            "entity": self.entity,
            "event_time": self.event_time,
            "deployment": self.deployment,
            "flags": self.flags,
            **{f"feature.{k}": v for k, v in self.features.items()},
        }


@dataclass(frozen=True)
class LlmLogEntry:
    """One request to the LLM gateway: who asked, which release answered, what it cost, what fired.

    The texts are as the guardrails left them: personal data in the question is redacted before
    the model sees it, and the answer is what the client was sent (never a withheld one)."""

    request_id: str
    time: datetime
    model: str
    version: str
    served_by: str  # champion | canary | fallback
    deployment: str | None
    release_digest: str | None
    prompt_version: str | None
    team: str
    key: str  # the API key's id
    endpoint: str  # chat | completions
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    ttft_ms: float | None
    duration_ms: float
    cached: bool
    status: str  # ok | blocked | cancelled | failed
    finish_reason: str
    blocked_by: str | None = None
    redactions: str | None = None  # comma-separated rules
    refused: bool = False
    fallback_from: str | None = None
    passages: str | None = None  # comma-separated ids of the knowledge base's passages the model was given
    sources: str | None = None  # comma-separated digests of their documents (the ledger knows each)
    retrieval_score: float | None = None  # the best passage's score (None: no knowledge base)
    question: str | None = None
    answer: str | None = None

    def row(self) -> dict[str, Any]:
        return {"kind": "llm", "row": 0, **{name: getattr(self, name) for name in self.__dataclass_fields__}}


class InferenceLog:
    """A background writer of ``LogEntry`` rows; use as a context manager or call ``close``."""

    def __init__(self, folder: Path, *, batch_rows: int = 5_000, batch_seconds: float = 2.0) -> None:
        self.folder = folder
        self._batch_rows, self._batch_seconds = batch_rows, batch_seconds
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self.written = 0
        self._writer = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._writer.start()

    def record(self, entry: LogEntry | LlmLogEntry) -> None:
        """Queue one entry; never blocks on disk."""
        if self._closed:
            raise RuntimeError("the inference log is closed")
        self._queue.put(entry)

    def record_all(self, entries: list[LogEntry]) -> None:
        """Queue a request's entries together: a reader sees all of them or none."""
        if self._closed:
            raise RuntimeError("the inference log is closed")
        self._queue.put(entries)

    def close(self) -> None:
        """Write everything queued so far, then stop the writer."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._writer.join()

    def __enter__(self) -> InferenceLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        """Write a batch when it is full, when its first entry is ``batch_seconds`` old, or at close."""
        batch: list[LogEntry] = []
        deadline = 0.0
        while True:
            wait = max(0.0, deadline - time.monotonic()) if batch else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            stop = item is _STOP
            if item is not None and not stop:
                if not batch:
                    deadline = time.monotonic() + self._batch_seconds
                if isinstance(item, list):
                    batch.extend(item)
                else:
                    batch.append(item)
            if batch and (stop or len(batch) >= self._batch_rows or time.monotonic() >= deadline):
                self._write(batch)
                batch = []
            if stop:
                return

    def _write(self, batch: list[LogEntry]) -> None:
        frame = pd.DataFrame([entry.row() for entry in batch])
        for day, rows in frame.groupby(frame["time"].dt.strftime("%Y-%m-%d")):
            folder = self.folder / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{datetime.now(UTC):%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
            partial = folder / f".{name}.partial"
            rows.to_parquet(partial, index=False)
            partial.rename(folder / name)
        self.written += len(batch)


def read_log(folder: Path, *, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
    """Every logged row in ``folder`` (optionally within [since, until)), oldest first."""
    files = sorted(p for p in folder.glob("date=*/part-*.parquet"))
    if not files:
        return pd.DataFrame(
            columns=[
                "request_id",
                "row",
                "time",
                "model",
                "version",
                "prediction",
                "served_by",
                "entity",
                "event_time",
                "deployment",
                "flags",
            ]
        )
    parts = [pd.read_parquet(p) for p in files]
    columns = list(dict.fromkeys(c for part in parts for c in part.columns))
    # All-empty columns (a flag no row had) are left out of the concatenation and come back as
    # missing values: pandas no longer guesses a dtype from them.
    frame = pd.concat([part.dropna(axis=1, how="all") for part in parts], ignore_index=True).reindex(columns=columns)
    if since is not None:
        frame = frame[frame["time"] >= since]
    if until is not None:
        frame = frame[frame["time"] < until]
    return frame.sort_values(["time", "request_id", "row"], kind="stable").reset_index(drop=True)


# A rating of a logged answer: posted to the gateway (``POST /v1/feedback``, which stamps the key
# and the time) or read from a file by ``monitoring.feedback``; here, below both of its users.
class FeedbackRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    request_id: str = Field(pattern=_REQUEST)
    rating: Literal["up", "down"]
    label: str | None = Field(None, max_length=100)
    correction: str | None = Field(None, max_length=4000)  # the answer it should have been
    comment: str | None = Field(None, max_length=1000)
    key: str | None = Field(None, max_length=200)  # the API key that posted it (gateway feedback)
    at: str | None = Field(None, max_length=40)
