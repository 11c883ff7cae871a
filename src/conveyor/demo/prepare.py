"""The demo's data: build (or find) its files, pin them in DVC, record them in the ledger.

The demo is an ordinary project: its columns live in ``conveyor.yaml`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from conveyor.demo.data import DEMO_DATASETS, generate, write_csv
from conveyor.pipelines.datasets import DatasetRef, version_dataset
from conveyor.registry.ledger import Ledger

__all__ = ["DemoDataset", "prepare_demo_data"]


@dataclass(frozen=True)
class DemoDataset:
    """One demo file after the demo has seen to it."""

    name: str
    ref: DatasetRef
    generated: bool  # False when the file was already there (e.g. from `dvc pull`)
    rows: int | None  # known when generated here


def prepare_demo_data(root: Path, ledger: Ledger) -> list[DemoDataset]:
    """Generate any missing demo file, then version each in DVC and the ledger."""
    prepared = []
    for name, spec in DEMO_DATASETS.items():
        path = root / spec.path
        rows = None
        if not path.is_file():
            frame = generate(spec)
            write_csv(frame, path)
            rows = len(frame)
        details = {"demo": name, "generator": "conveyor.demo.data", "seed": spec.seed}
        ref = version_dataset(path, ledger, root=root, details=details, track=True)
        prepared.append(DemoDataset(name, ref, rows is not None, rows))
    return prepared
