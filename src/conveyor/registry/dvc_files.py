"""What DVC knows about a data file (the md5 its ``.dvc`` file records, the copy in its cache), and
the one way Conveyor opens a project's DVC repository.

A project may be a git clone, a copy outside any git work tree, or a folder inside another
repository's work tree. DVC needs git unless its config says ``core.no_scm``; ``open_dvc`` says it
for a project that no git work tree holds, so the same project works copied anywhere, without
writing that into the project's committed ``.dvc/config``."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.policies.errors import DataInvalid

if TYPE_CHECKING:
    from dvc.repo import Repo

__all__ = ["dvc_add", "dvc_cached", "dvc_recorded_md5", "in_git_work_tree", "open_dvc"]


def in_git_work_tree(folder: Path) -> bool:
    """Whether ``folder`` lies inside a git work tree (its own or a parent's)."""
    git = shutil.which("git")
    if git is None:
        return False
    found = subprocess.run(
        [git, "rev-parse", "--is-inside-work-tree"], cwd=folder, capture_output=True, text=True, check=False
    )
    return found.returncode == 0 and found.stdout.strip() == "true"


@contextlib.contextmanager
def open_dvc(root: Path, config: dict[str, Any] | None = None) -> Iterator[Repo]:
    """The DVC repository at ``root``, with ``core.no_scm`` when no git work tree holds it; its
    "to track the changes with git" hints (meant for its own command line) kept quiet."""
    from dvc.repo import Repo

    merged: dict[str, Any] = dict(config or {})
    if not in_git_work_tree(root):
        merged["core"] = {**merged.get("core", {}), "no_scm": True}
    with contextlib.redirect_stdout(io.StringIO()), Repo(str(root), config=merged or None) as repo:
        repo.scm_context.quiet = True
        yield repo


def dvc_add(root: Path, paths: list[Path]) -> None:
    """``dvc add`` of ``paths`` in the project at ``root``; a failure is one paragraph."""
    from dvc.exceptions import DvcException

    try:
        with open_dvc(root) as repo:
            repo.add([str(p) for p in paths])
    except DvcException as exc:
        names = ", ".join(str(p) for p in paths)
        raise DataInvalid(
            f"DVC could not track {names}: {' '.join(str(exc).split())}.",
            hint="Run `dvc doctor` and `dvc status` to see why.",
        ) from None


def dvc_recorded_md5(path: Path) -> str | None:
    """The md5 that ``<path>.dvc`` records, or None when DVC does not track the file."""
    import yaml

    record = path.with_name(path.name + ".dvc")
    if not record.is_file():
        return None
    try:
        outs = yaml.safe_load(record.read_text(encoding="utf-8"))["outs"]
        return next(o["md5"] for o in outs if o["path"] == path.name)
    except (yaml.YAMLError, KeyError, TypeError, StopIteration):
        raise DataInvalid(
            f"{record} is not a readable DVC record for {path.name}.",
            hint=f"Restore it from git (`git checkout -- {record}`) or re-create it with `dvc add {path}`.",
        ) from None


def dvc_cached(root: Path, md5: str | None) -> Path | None:
    """DVC's cached copy of the content with ``md5`` in the repository at ``root``, if it has one."""
    path = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:] if md5 else None
    return path if path is not None and path.is_file() else None
