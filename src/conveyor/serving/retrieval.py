"""Retrieval over a release's knowledge base: BM25 (``bm25s``) over the passages it was built from.

The index is a folder of the release (``index/``: bm25s's arrays and vocabulary, saved without
pickle, and ``passages.jsonl``, each passage's id, document, document digest and text), so it is
signed with the release's other files and verified with them before ``Retriever.open`` reads
it. Questions and passages are tokenised the same way (``tokenize``: bm25s's English stop words,
plus a small suffix stemmer of ours); the tokenizer's name is kept in the index and checked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ABOUT",
    "INDEX_DIR",
    "PASSAGES",
    "TOKENIZER",
    "Passage",
    "Retrieved",
    "Retriever",
    "render_passages",
    "tokenize",
]

INDEX_DIR = "index"
PASSAGES = "passages.jsonl"
ABOUT = "conveyor.index.json"  # how the index was made: the tokenizer, the library, the passages
TOKENIZER = "bm25s-en+suffix/1"
_SUFFIXES = ("ing", "ed", "s")
NO_PASSAGES = "(none: the documents do not cover this question)"


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def tokenize(texts: list[str]) -> list[list[str]]:
    import bm25s

    tokens = bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
    return [[_stem(t) for t in words] for words in tokens]


@dataclass(frozen=True)
class Passage:
    id: str  # "<document>#<n>"
    document: str  # the document's id: its path inside the knowledge base
    digest: str  # the document's content address (the ledger knows it)
    text: str
    score: float = 0.0

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "document": self.document, "digest": self.digest, "score": round(self.score, 3)}


@dataclass(frozen=True)
class Retrieved:
    passages: tuple[Passage, ...]  # those at or above the release's minimum score, best first
    best_score: float  # the best passage's score, used or not (monitoring reads it)

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.passages]


class Retriever:
    """A loaded index: ``search(question)`` gives the passages the model will be shown."""

    def __init__(self, bm25: Any, passages: list[Passage], *, top_k: int, min_score: float) -> None:
        self.bm25 = bm25
        self.passages = passages
        self.top_k = top_k
        self.min_score = min_score

    @classmethod
    def open(cls, folder: Path, *, top_k: int, min_score: float) -> Retriever:
        """Read ``folder`` (a verified release's ``index/``); ``ValueError`` if it is not a whole index."""
        import bm25s

        try:
            params = json.loads((folder / "params.index.json").read_text())
            about = json.loads((folder / ABOUT).read_text())
            if about.get("tokenizer") != TOKENIZER:
                raise ValueError(f"index tokenised by {about.get('tokenizer')!r}, this code by {TOKENIZER!r}")
            lines = (folder / PASSAGES).read_text(encoding="utf-8").splitlines()
            passages = [Passage(**json.loads(line)) for line in lines if line.strip()]
            bm25 = bm25s.BM25.load(str(folder), allow_pickle=False, show_progress=False)
        except (OSError, KeyError, TypeError) as exc:
            raise ValueError(f"not a readable index ({type(exc).__name__}: {exc})") from None
        if int(params.get("num_docs", -1)) != len(passages):
            raise ValueError(f"the index holds {params.get('num_docs')} passages and passages.jsonl {len(passages)}")
        return cls(bm25, passages, top_k=top_k, min_score=min_score)

    def search(self, question: str) -> Retrieved:
        tokens = tokenize([question])
        if not tokens[0] or not self.passages:
            return Retrieved((), 0.0)
        k = min(self.top_k, len(self.passages))
        found, scores = self.bm25.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        ranked = [(int(i), float(s)) for i, s in zip(found[0], scores[0], strict=True)]
        best = ranked[0][1] if ranked else 0.0
        chosen = tuple(
            Passage(**{**asdict(self.passages[i]), "score": s}) for i, s in ranked if s >= self.min_score and s > 0
        )
        return Retrieved(chosen, best)


def render_passages(retrieved: Retrieved | None) -> str:
    """The passages as the prompt shows them, each under its id."""
    if retrieved is None or not retrieved.passages:
        return NO_PASSAGES
    return "\n".join(f"[{p.id}] {p.text}" for p in retrieved.passages)
