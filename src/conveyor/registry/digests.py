"""Content addresses: the one way Conveyor names an artifact.

A digest is ``sha256:<64 hex>``. A file, a byte string or a JSON value gets one,
so hashing a file found on disk is enough to find its history in the ledger.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, BinaryIO

from conveyor.policies.errors import NotFound

__all__ = [
    "ALGORITHM",
    "bytes_digest",
    "canonical_json",
    "copy_digest",
    "file_digest",
    "file_hashes",
    "is_digest",
    "json_digest",
    "parse_digest",
    "short",
]

ALGORITHM = "sha256"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20


def bytes_digest(data: bytes) -> str:
    """The content address of ``data``."""
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def file_digest(path: str | Path) -> str:
    """The content address of a file's bytes, read in chunks (constant memory)."""
    return file_hashes(path)[ALGORITHM]


def file_hashes(path: str | Path, *others: str) -> dict[str, str]:
    """The file's content address (key ``"sha256"``) and hex digests in ``others`` (e.g. ``"md5"``,
    which DVC records), all from one read of the file."""
    path = Path(path)
    hashers = {name: hashlib.new(name) for name in (ALGORITHM, *others)}
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                for hasher in hashers.values():
                    hasher.update(chunk)
    except FileNotFoundError:
        raise NotFound(f"No file at {path}.", hint="Check the path, or pass a digest instead.") from None
    except IsADirectoryError:
        raise NotFound(f"{path} is a folder, not a file.", hint="Pass a file inside it.") from None
    found = {name: hasher.hexdigest() for name, hasher in hashers.items()}
    found[ALGORITHM] = f"{ALGORITHM}:{found[ALGORITHM]}"
    return found


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def json_digest(value: Any) -> str:
    """The content address of a JSON-able value, through ``canonical_json``."""
    return bytes_digest(canonical_json(value))


def is_digest(text: str) -> bool:
    """Whether ``text`` is a well-formed ``sha256:<hex>`` content address."""
    return bool(_DIGEST.match(text))


def parse_digest(text: str) -> str:
    """Normalise a digest the user typed (``sha256:`` prefix optional, any case)."""
    candidate = text.strip().lower()
    if not candidate.startswith(f"{ALGORITHM}:"):
        candidate = f"{ALGORITHM}:{candidate}"
    if not is_digest(candidate):
        raise NotFound(
            f"{text!r} is neither a file nor a sha256 digest.",
            hint="Pass a path to an existing file, or a digest such as sha256:<64 hex digits>.",
        )
    return candidate


def short(digest: str, length: int = 12) -> str:
    """A digest cut for display: ``sha256:1a2b3c4d5e6f``."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}:{hexdigest[:length]}"


def copy_digest(source: BinaryIO, target: BinaryIO) -> str:
    """Copy ``source`` to ``target`` (open files) and return the content address of what was
    copied, from the same read of each block."""
    hasher = hashlib.new(ALGORITHM)
    while chunk := source.read(_CHUNK):
        hasher.update(chunk)
        target.write(chunk)
    return f"{ALGORITHM}:{hasher.hexdigest()}"
