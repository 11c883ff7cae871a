"""Crash-consistent registration: a version is registered once the ledger says so, and a
registration that died half-way is recognised, marked and never trusted.

Registering a version is several writes to two stores: MLflow creates the version (with its
``conveyor.*`` tags), tags its digest and moves ``@candidate``; then the ledger records
``model.registered``. A process killed between them leaves a version the ledger does not know.
``register`` holds a per-model lock file over all of it (and deletes the version when a step
fails with an error); ``reconcile`` is run by the next command that touches the model (``status``,
``verify``, ``promote``, the next registration): when no registration of the model is under way
(the lock is free: a killed process holds none), every version with Conveyor's tags and no
``model.registered`` event is tagged ``conveyor.unfinished`` with the reason, and loses the aliases
that point at it. Such a version fails verification's ledger link, so it can never be promoted.

A build works in a staging folder of its own (``staging_folder``), removed when the build ends,
however it ends; one left by a process that was killed (its pid, in the folder's name, is gone)
is removed by the next build.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger, utc_now

__all__ = ["UNFINISHED", "guarded", "reconcile", "registering", "staging_folder", "unfinished_versions"]

UNFINISHED = "conveyor.unfinished"  # the tag that marks a registration that did not finish
_OURS = "conveyor.model_digest"  # set when Conveyor creates a version: a version without it is not ours
T = TypeVar("T")
_LEGACY_STALE_SECONDS = 3_600  # a staging folder without an owner's pid, older than this, is a leftover


@contextlib.contextmanager
def staging_folder(home: Path) -> Iterator[Path]:
    """A new folder under ``home/staging`` for one build, removed when the build ends; first,
    those left by builds whose process is gone are removed."""
    parent = home / "staging"
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(parent)
    folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_stale(parent: Path) -> None:
    for entry in parent.iterdir():
        owner = entry.name.split("-", 1)[0]
        if owner.isdigit():
            stale = not _alive(int(owner))
        else:  # from before staging folders named their process
            stale = time.time() - entry.stat().st_mtime > _LEGACY_STALE_SECONDS
        if stale:
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def registering(home: Path, name: str) -> Iterator[None]:
    """Hold ``name``'s registration lock (blocks while another registration of it is under way)."""
    with _lock(home, name, block=True):
        yield


@contextlib.contextmanager
def _lock(home: Path, name: str, *, block: bool) -> Iterator[bool]:
    folder = home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"registration-{name}.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def unfinished_versions(client: Any, ledger: Ledger, name: str) -> dict[str, str]:
    """Versions of ``name`` that Conveyor began to register and the ledger never recorded, with why
    (a version already marked keeps its recorded reason)."""
    recorded = {
        str(e.details.get("version")) for e in ledger.latest([EventKind.MODEL_REGISTERED], limit=1_000_000, model=name)
    }
    found = {}
    for version in client.search_model_versions(f"name = '{name}'"):
        tags = version.tags or {}
        if _OURS not in tags or str(version.version) in recorded:
            continue
        found[str(version.version)] = tags.get(UNFINISHED) or (
            "its registration did not finish: the ledger has no model.registered event for it "
            "(the process that registered it stopped half-way)"
        )
    return found


def reconcile(client: Any, ledger: Ledger, home: Path, name: str) -> dict[str, str]:
    """Mark ``name``'s unfinished registrations (see the module's docstring); returns them, version
    -> reason. Nothing is marked while a registration of the model is under way."""
    with _lock(home, name, block=False) as free:
        if not free:
            return {}
        found = unfinished_versions(client, ledger, name)
        for version, reason in found.items():
            tags = client.get_model_version(name, version).tags or {}
            if UNFINISHED not in tags:
                client.set_model_version_tag(name, version, UNFINISHED, f"{reason}; marked {utc_now()}")
            for alias in _aliases_of(client, name, version):
                client.delete_registered_model_alias(name, alias)
        return found


def _aliases_of(client: Any, name: str, version: str) -> list[str]:
    try:
        aliases = client.get_registered_model(name).aliases or {}
    except Exception:
        return []
    return [alias for alias, target in aliases.items() if str(target) == version]


def guarded(action: Callable[[], T], undo: Callable[[], None]) -> T:
    """``action()``; ``undo()`` when it raises (the error is the one reported)."""
    try:
        return action()
    except BaseException:
        with contextlib.suppress(Exception):
            undo()
        raise
