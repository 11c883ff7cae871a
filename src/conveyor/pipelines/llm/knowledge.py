"""The knowledge base of an LLM release: versioned (DVC's directory md5, the ledger), validated
(Great Expectations over a table of its documents), cut into passages and indexed (bm25s).

``version_knowledge`` reads every ``.md``/``.txt`` file of the folder once, computes the md5
that ``dvc add`` records for the folder (refusing content that differs from ``<folder>.dvc``)
and the content address of the whole, and records a ``knowledge.versioned`` event naming every
document's digest, so lineage leads from an answer's passage to its document and the data
version it came in. ``validate_knowledge`` runs the suite; a failure stops the build before
anything is signed or registered. ``build_index`` writes the release's ``index/`` folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from conveyor.pipelines.datasets import relative_to_root
from conveyor.pipelines.validate import _build_suite, _context, _failure, _run
from conveyor.pipelines.validation_page import write_validation_page
from conveyor.policies.errors import DataInvalid
from conveyor.policies.llm import Knowledge
from conveyor.registry.digests import bytes_digest, canonical_json, file_digest, json_digest
from conveyor.registry.dvc_files import dvc_recorded_md5
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger
from conveyor.serving.retrieval import ABOUT, INDEX_DIR, PASSAGES, TOKENIZER, Passage, tokenize

__all__ = [
    "SUFFIXES",
    "KnowledgeVersion",
    "Validated",
    "build_index",
    "passages_of",
    "read_knowledge",
    "validate_knowledge",
    "version_knowledge",
]

SUFFIXES = (".md", ".txt")
_SUITE = "conveyor.knowledge/1"


@dataclass(frozen=True)
class KnowledgeVersion:
    folder: Path
    digest: str  # the content address of the whole: every document's id and digest
    md5: str  # what `dvc add` records for the folder ("….dir")
    tracked: bool  # the folder has a DVC record (and it matches)
    documents: dict[str, str]  # id (path inside the folder) -> content digest
    table: pd.DataFrame  # one row per document: id, digest, bytes, chars, utf8, text
    event: int = 0

    @property
    def size(self) -> int:
        return int(self.table["bytes"].sum()) if len(self.table) else 0


def read_knowledge(folder: Path, spec: Knowledge) -> KnowledgeVersion:
    """Every document of ``folder`` read once: its table, its digests and DVC's md5 of the folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if len(files) > spec.max_documents:
        raise DataInvalid(
            f"{folder} holds {len(files)} documents, more than `knowledge.max_documents` ({spec.max_documents}).",
            hint="Raise the limit in the project config, or split the knowledge base. Nothing was built.",
        )
    rows, listing = [], []
    every = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in every:  # DVC hashes every file of the folder, documents or not
        data = path.read_bytes()
        relative = path.relative_to(folder).as_posix()
        listing.append({"md5": hashlib.md5(data, usedforsecurity=False).hexdigest(), "relpath": relative})
        if path not in files:
            continue
        try:
            text, utf8 = data.decode("utf-8"), True
        except UnicodeDecodeError:
            text, utf8 = data.decode("utf-8", "replace"), False
        rows.append(
            {
                "id": relative,
                "digest": bytes_digest(data),
                "bytes": len(data),
                "chars": len(text.strip()),
                "utf8": utf8,
                "text": text,
            }
        )
    md5 = hashlib.md5(json.dumps(listing, sort_keys=True).encode(), usedforsecurity=False).hexdigest() + ".dir"
    recorded = dvc_recorded_md5(folder)
    if recorded is not None and recorded != md5:
        raise DataInvalid(
            f"{folder} has changed since DVC recorded it (md5 {md5}, but {folder.name}.dvc records {recorded}).",
            hint=f"To go back to the recorded version run `dvc checkout {folder}`; to make this content the new "
            f"version run `dvc add {folder}` and commit the .dvc file. Nothing was built.",
        )
    table = pd.DataFrame(rows, columns=["id", "digest", "bytes", "chars", "utf8", "text"])
    documents = dict(zip(table["id"], table["digest"], strict=True))
    return KnowledgeVersion(folder, json_digest({"knowledge": documents}), md5, recorded is not None, documents, table)


def version_knowledge(folder: Path, spec: Knowledge, ledger: Ledger, *, root: Path) -> KnowledgeVersion:
    """Read ``folder`` and record its version (once per content) as ``knowledge.versioned``."""
    version = read_knowledge(folder, spec)
    known = [e for e in ledger.producers(version.digest) if e.kind == EventKind.KNOWLEDGE_VERSIONED]
    if known:
        event = known[0]
    else:
        event = ledger.append(
            EventKind.KNOWLEDGE_VERSIONED,
            outputs=[version.digest, *dict.fromkeys(version.documents.values())],
            details={
                "path": relative_to_root(folder, root),
                "md5": version.md5,
                "dvc": "tracked" if version.tracked else "untracked",
                "documents": version.documents,
                "size": version.size,
            },
        )
    return KnowledgeVersion(
        version.folder, version.digest, version.md5, version.tracked, version.documents, version.table, event.seq
    )


@dataclass(frozen=True)
class Validated:
    digest: str  # the validation record's content address
    report: Path
    failures: list[str]


def _suite(spec: Knowledge) -> dict[str, Any]:
    def expect(kind: str, **kwargs: Any) -> dict[str, Any]:
        return {"type": kind, "kwargs": kwargs}

    return {
        "name": "knowledge",
        "expectations": [
            expect("expect_table_row_count_to_be_between", min_value=1, max_value=spec.max_documents),
            expect("expect_column_values_to_not_be_null", column="text"),
            expect(
                "expect_column_values_to_be_between", column="chars", min_value=spec.min_chars, max_value=spec.max_chars
            ),
            expect("expect_column_values_to_be_in_set", column="utf8", value_set=[True]),
            expect("expect_column_values_to_be_in_set", column="pii", value_set=[""]),
            expect("expect_column_values_to_be_unique", column="digest"),
        ],
    }


def validate_knowledge(
    version: KnowledgeVersion, spec: Knowledge, guardrails: Any, reports: Path, ledger: Ledger, *, model: str = ""
) -> Validated:
    """Great Expectations over the documents' table (non-empty, length bounds, UTF-8, no personal data
    by the release's own guardrail rules, no duplicates); ``DataInvalid`` naming the documents that fail."""
    frame = version.table.copy()
    # As the model will read it: markdown heading marks off (Presidio takes "# Canary" for a name).
    plain = ["\n".join(_HEADING.sub("", line) for line in str(t).splitlines()) for t in frame["text"]]
    frame["pii"] = [",".join(sorted({s.rule for s in guardrails.pii_spans(t)})) for t in plain]
    document = _suite(spec)
    context, batch = _context()
    suite = context.suites.add(_build_suite(document, Path("knowledge"), []))
    result = _run(context, batch, suite, frame)
    failures = [_failure(r) for r in result["results"] if not r["success"]]
    record = {"suite": _SUITE, "knowledge": version.digest, "success": bool(result["success"])}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    report = reports / "validation" / f"knowledge-{version.digest.split(':')[1][:16]}-{stamp}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_bytes(canonical_json({**record, "result": result}))
    digest = file_digest(report)  # the validation is its report, as for a tabular dataset
    write_validation_page(
        result,
        dataset=f"knowledge {version.digest.split(':')[1][:12]}",
        rows=len(frame),
        path=report.with_suffix(".html"),
        model=model,
        reports=reports,
    )
    described = [_describe(f, frame, spec) for f in failures]
    ledger.append(
        EventKind.DATA_VALIDATED,
        inputs={"data": version.digest, "suite": json_digest(document)},
        outputs=[digest],
        details={
            "success": not failures,
            "evaluated": len(result["results"]),
            "failed": len(failures),
            "report": str(report),
            "suite": _SUITE,
        },
    )
    if failures:
        raise DataInvalid(
            f"The knowledge base {version.folder} failed validation: {'; '.join(described)}.",
            hint=f"Fix or remove the documents named; nothing was built, signed or registered. The report: {report}",
        )
    return Validated(digest, report, [])


def _describe(failure: Any, frame: pd.DataFrame, spec: Knowledge) -> str:
    column, kind = failure.column, failure.expectation
    if kind == "expect_table_row_count_to_be_between":
        return f"{len(frame)} documents (.md or .txt files), at least 1 needed"
    if column == "chars":
        bad = frame[(frame["chars"] < spec.min_chars) | (frame["chars"] > spec.max_chars)]
        return f"documents outside {spec.min_chars:,}-{spec.max_chars:,} characters: " + ", ".join(
            f"{r.id} ({r.chars:,})" for r in bad.head(5).itertuples()
        )
    if column == "utf8":
        return f"documents not UTF-8: {', '.join(frame.loc[~frame['utf8'], 'id'][:5])}"
    if column == "pii":
        found = frame[frame["pii"] != ""]
        return "personal data in " + ", ".join(f"{r.id} ({r.pii})" for r in found.head(5).itertuples())
    if column == "digest":
        twice = frame[frame.duplicated("digest", keep=False)]
        return f"duplicate documents: {', '.join(twice['id'][:6])}"
    return f"{kind} on {column}"


_HEADING = re.compile(r"^\s*#+\s*")


def passages_of(version: KnowledgeVersion, spec: Knowledge) -> list[Passage]:
    """Each document's paragraphs, joined up to about ``passage_words`` words; a heading goes with
    the paragraph it introduces. Ids are ``<document>#<n>``."""
    passages: list[Passage] = []
    for row in version.table.itertuples():
        text = str(row.text).replace("\r\n", "\n")
        blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
        groups: list[list[str]] = []
        count = 0
        for block in blocks:
            words = len(block.split())
            if not groups or (count + words > spec.passage_words and not _HEADING.match(groups[-1][-1])):
                groups.append([])
                count = 0
            groups[-1].append(block)
            count += words
        for number, group in enumerate(groups):
            plain = " ".join(" ".join(_HEADING.sub("", line) for line in block.splitlines()) for block in group)
            passages.append(Passage(f"{row.id}#{number}", str(row.id), str(row.digest), plain))
    return passages


def build_index(passages: list[Passage], folder: Path) -> dict[str, str]:
    """Write ``folder/index/`` (bm25s's files, without pickle, and the passages); the files' digests."""
    import bm25s

    target = folder / INDEX_DIR
    target.mkdir(parents=True, exist_ok=True)
    retriever = bm25s.BM25()
    retriever.index(tokenize([f"{p.document} {p.text}" for p in passages]), show_progress=False)
    retriever.save(str(target), allow_pickle=False, show_progress=False)
    about = {"tokenizer": TOKENIZER, "library": f"bm25s=={metadata.version('bm25s')}", "passages": len(passages)}
    (target / ABOUT).write_text(json.dumps(about, indent=2, sort_keys=True) + "\n")
    lines = [
        json.dumps({"id": p.id, "document": p.document, "digest": p.digest, "text": p.text}, sort_keys=True)
        for p in passages
    ]
    (target / PASSAGES).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {f"{INDEX_DIR}/{p.name}": file_digest(p) for p in sorted(target.iterdir())}
