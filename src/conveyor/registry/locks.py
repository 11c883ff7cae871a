"""One operation per model at a time, on this machine: an exclusive lock file under ``home/locks``."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["file_lock"]


@contextmanager
def file_lock(home: Path, name: str) -> Iterator[None]:
    """Hold ``home/locks/<name>.lock`` exclusively (blocks until it is free)."""
    folder = home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
