"""What DVC knows about a data file: the md5 its ``.dvc`` file records, the copy in its cache."""

from __future__ import annotations

from pathlib import Path

from conveyor.policies.errors import DataInvalid

__all__ = ["dvc_cached", "dvc_recorded_md5"]


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
