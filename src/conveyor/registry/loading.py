"""Verify, then load exactly what was verified: the one way a registered model's bytes become objects.

``verified_copy`` verifies a version into a private folder and makes its files read-only; nothing
is fetched again between the check and the load, and a version that does not verify is refused
(``SignatureInvalid``, naming the failing link) before any of its bytes are deserialized.
``load_estimator`` then loads a scikit-learn model from such a folder with skops, trusting only
the types that the signed ``MLmodel`` lists, and only those the project allows
(``policies/signing.yaml`` ``loadable_types``; by default numpy, SciPy, scikit-learn and the
project's own estimator class): a type outside that list is refused even when signed, and a
pickled model (whose loading runs arbitrary code) is never loaded.
"""

from __future__ import annotations

import contextlib
import fnmatch
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.policies.errors import SignatureInvalid

if TYPE_CHECKING:
    from conveyor.registry.ledger import Ledger
    from conveyor.registry.verify import VerificationReport
    from conveyor.registry.workspace import Workspace

__all__ = ["DEFAULT_LOADABLE", "load_estimator", "make_read_only", "untrusted_types", "verified_copy"]

DEFAULT_LOADABLE = ("numpy.*", "scipy.*", "sklearn.*")  # what the project's pipeline is built from


def make_read_only(folder: Path) -> None:
    """Every file under ``folder`` read-only (folders stay writable, so the copy can be removed)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@contextlib.contextmanager
def verified_copy(ws: Workspace, ref: str, ledger: Ledger, *, what: str) -> Iterator[tuple[VerificationReport, Path]]:
    """``ref`` verified into a private, read-only copy: (report, the copy's folder), removed
    afterwards. ``what`` names the model's role in the refusal ("The champion", "The candidate")."""
    with tempfile.TemporaryDirectory(prefix="conveyor-verified-") as scratch:
        folder = Path(scratch) / "files"
        report = ws.verify_ref(ref, ledger, keep=folder)
        if not report.ok:
            failed = report.first_failure
            assert failed is not None  # the report is not ok: some link failed
            named = f"{report.name} version {report.version}" if report.version else ref
            raise SignatureInvalid(
                f"{what}, {named}, does not verify ({failed.name}: {failed.detail}); none of its files were "
                "loaded, and nothing was decided on it.",
                hint=f"Investigate with `conveyor verify {ref}`; `conveyor rollback {report.name}` restores the "
                "former champion.",
            )
        make_read_only(folder)
        yield report, _model_dir(folder)


def _model_dir(folder: Path) -> Path:
    """The folder holding ``MLmodel`` in a fetched copy (the copy itself, or its one subfolder)."""
    if (folder / "MLmodel").is_file():
        return folder
    found = [p.parent for p in folder.rglob("MLmodel")]
    return found[0] if len(found) == 1 else folder


def untrusted_types(model_dir: Path, allowed: Sequence[str]) -> list[str]:
    """The types the model's (verified) ``MLmodel`` asks skops to trust that ``allowed`` (glob
    patterns of dotted names) does not cover."""
    return [t for t in _flavor(model_dir).get("skops_trusted_types") or [] if not _covered(t, allowed)]


def load_estimator(model_dir: Path, allowed: Sequence[str]) -> Any:
    """The estimator in a verified MLflow scikit-learn model folder, loaded with skops; refused
    (``SignatureInvalid``) when it is not a skops file or lists a type ``allowed`` does not cover."""
    import skops.io

    flavor = _flavor(model_dir)
    if flavor.get("serialization_format") != "skops":
        raise SignatureInvalid(
            f"{model_dir.name} is stored as {flavor.get('serialization_format')!r}, which runs code when loaded; "
            "only skops models are loaded.",
            hint="Retrain it with Conveyor (`conveyor train`), which stores models with skops.",
        )
    outside = untrusted_types(model_dir, allowed)
    if outside:
        raise SignatureInvalid(
            f"The model asks to trust type(s) outside the project's loadable types: {', '.join(outside)}.",
            hint="If you trust them, add them to `loadable_types` in policies/signing.yaml "
            f"(now: {', '.join(allowed)}); nothing was loaded.",
        )
    return skops.io.load(model_dir / flavor["pickled_model"], trusted=flavor.get("skops_trusted_types") or [])


def _flavor(model_dir: Path) -> dict[str, Any]:
    import yaml

    try:
        return dict(yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))["flavors"]["sklearn"])
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise SignatureInvalid(
            f"{model_dir} has no readable scikit-learn MLmodel: {exc}.", hint="Is it a model Conveyor trained?"
        ) from None


def _covered(name: str, allowed: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed)
