"""Drift check cost vs a bare Evidently call on the same data, and trigger-to-running latency.

    .venv/bin/python bench/monitoring.py [--sizes 10000,100000,1000000]

For each window size: Conveyor's comparison (``monitoring.drift.check_drift``: typing, Evidently,
reading the verdict, HTML and JSON reports) with sampling off, against ``Report.run`` alone on the
same frames, in the same process; the ratio is Conveyor / bare. Then the policy's sampling on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conveyor.demo.data import DEMO_DATASETS, generate
from conveyor.monitoring.drift import check_drift
from conveyor.policies.drift import DriftPolicy, WindowPolicy
from conveyor.policies.project import load_project

REPO = Path(__file__).resolve().parents[1]


def bare(reference: pd.DataFrame, current: pd.DataFrame, project, policy: DriftPolicy) -> float:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    definition = DataDefinition(
        numerical_columns=list(project.features.numeric), categorical_columns=list(project.features.categorical)
    )
    Report(
        [DataDriftPreset(drift_share=policy.drift.share, num_method="ks", cat_method="chisquare")], include_tests=True
    ).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    project = load_project(REPO / "conveyor.yaml", check_data=False)
    names = list(project.features.all)
    reference = generate(DEMO_DATASETS["v1"])[names]
    drifted = generate(DEMO_DATASETS["drift"])[names]
    for column in project.features.numeric:
        reference[column] = reference[column].astype("float64")
        drifted[column] = drifted[column].astype("float64")
    bare(reference.head(1000), drifted.head(1000), project, DriftPolicy())  # warm-up: imports
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            current = drifted.sample(size, replace=True, random_state=1).reset_index(drop=True)
            unsampled = DriftPolicy(window=WindowPolicy(sample_above=10**9))
            started = time.perf_counter()
            compared = check_drift(reference, current, project, unsampled, Path(folder), f"b{size}")
            ours = time.perf_counter() - started
            base = bare(reference, current, project, unsampled)
            started = time.perf_counter()
            check_drift(reference, current, project, DriftPolicy(), Path(folder), f"s{size}")
            sampled = time.perf_counter() - started
            print(
                f"window {size:>9,}: conveyor {ours:6.2f} s, bare evidently {base:6.2f} s, ratio {ours / base:.2f}; "
                f"with the policy's sampling {sampled:6.2f} s ({sampled / base:.2f}x bare); share {compared.share:.2f}"
            )


if __name__ == "__main__":
    main()
