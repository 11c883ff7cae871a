"""Datasets as versioned, content-addressed artifacts: DVC tracks the file, the ledger its history.

``version_dataset`` hashes a data file once (sha256 for Conveyor, md5 for DVC), makes sure
DVC's record and cache agree with it, and appends a ``dataset.versioned`` event unless the
ledger already knows that exact content.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.policies.errors import ConfigInvalid, DataInvalid
from conveyor.registry.digests import file_hashes
from conveyor.registry.dvc_files import dvc_add, dvc_cached, dvc_recorded_md5, open_dvc
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger, LedgerEvent

__all__ = ["DatasetRef", "Transfer", "relative_to_root", "transfer_data", "version_dataset"]

SERVER_REMOTE = "conveyor-servers"  # the DVC remote the server profile names: s3://BUCKET/dvc


@dataclass(frozen=True)
class DatasetRef:
    """A data file pinned to its content: what later stages take as input."""

    path: Path
    digest: str  # sha256 content address
    md5: str  # what DVC records for the same bytes
    size: int
    event: int  # the ledger event that recorded this content
    newly_recorded: bool


def version_dataset(
    path: Path, ledger: Ledger, *, root: Path, details: dict[str, Any] | None = None, track: bool = False
) -> DatasetRef:
    """Pin ``path`` in the ledger, refusing content that differs from DVC's record of it.

    With ``track`` (the demo), also put the file under DVC when ``root`` is a DVC repository.
    Training does not: it may run inside ``dvc repro``, which holds DVC's lock, and adding data
    to DVC is the data owner's decision (``dvc add``).
    """
    hashes = file_hashes(path, "md5")
    recorded = dvc_recorded_md5(path)
    if recorded is not None and recorded != hashes["md5"]:
        raise DataInvalid(
            f"{path} has changed since DVC recorded it (md5 {hashes['md5']}, but {path.name}.dvc records {recorded}).",
            hint=f"To go back to the recorded version run `dvc checkout {path}`; to make this "
            f"content the new version run `dvc add {path}` and commit the .dvc file.",
        )
    if track and (root / ".dvc").is_dir() and dvc_cached(root, hashes["md5"]) is None:
        dvc_add(root, [path])

    relative = relative_to_root(path, root)
    known = [e for e in ledger.producers(hashes["sha256"]) if e.kind == EventKind.DATASET_VERSIONED]
    event: LedgerEvent
    if known:
        event, new = known[0], False
    else:
        event = ledger.append(
            EventKind.DATASET_VERSIONED,
            outputs=[hashes["sha256"]],
            details={
                "path": relative,
                "md5": hashes["md5"],
                "size": path.stat().st_size,
                "dvc": "tracked" if recorded or track else "untracked",
                **(details or {}),
            },
        )
        new = True
    return DatasetRef(path, hashes["sha256"], hashes["md5"], path.stat().st_size, event.seq, new)


def relative_to_root(path: Path, root: Path) -> str:
    """``path`` relative to the project root when inside it, else absolute (as recorded in the ledger)."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


@dataclass(frozen=True)
class Transfer:
    """What ``dvc push`` or ``dvc pull`` moved, and where."""

    direction: str  # push | pull
    remote: str  # its name and URL
    files: int  # pushed to the remote, or (pull) brought into the work tree


def transfer_data(root: Path, direction: str, *, bucket: str | None = None, endpoint: str | None = None) -> Transfer:
    """``dvc push`` or ``dvc pull`` for the project at ``root``: to the repository's default remote,
    or, given ``bucket`` (the server profile), to ``s3://BUCKET/dvc`` at ``endpoint``; nothing is
    written to the repository's DVC config. Credentials are the object store's (``AWS_*``)."""
    from dvc.exceptions import DvcException

    if not (root / ".dvc").is_dir():
        raise ConfigInvalid(
            f"{root} is not a DVC repository, so it has no versioned data to {direction}.",
            hint="`dvc init` and `dvc add` the data files (`conveyor init` does both for a new project).",
        )
    config: dict[str, Any] | None = None
    if bucket:
        remote: dict[str, Any] = {"url": f"s3://{bucket}/dvc", **({"endpointurl": endpoint} if endpoint else {})}
        config = {"core": {"remote": SERVER_REMOTE}, "remote": {SERVER_REMOTE: remote}}
    try:
        with open_dvc(root, config) as repo:
            name = repo.config["core"].get("remote")
            if not name:
                raise ConfigInvalid(
                    f"{root} has no default DVC remote to {direction} to.",
                    hint="Add one (`dvc remote add -d NAME URL`), or use the server profile's bucket.",
                )
            where = f"{name} ({repo.config['remote'][name]['url']})"
            if direction == "push":
                files = int(repo.push())
            else:
                done = repo.pull()  # checkout's result: the files it added or changed in the work tree
                files = len(done.get("added", [])) + len(done.get("modified", []))
    except DvcException as exc:
        raise DataInvalid(
            f"dvc {direction} failed: {' '.join(str(exc).split())}.",
            hint="`conveyor doctor` says whether the object store answers; `dvc status -c` what differs.",
        ) from None
    return Transfer(direction, where, files)
