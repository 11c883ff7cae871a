"""Release as the pipelines see it: promotion may score the champion on the candidate's holdout.

The release itself (verify, decide, move an alias, record) lives in ``registry.release``, where
the service can use it too; this adds what only the pipelines know how to do: rebuild the
candidate's holdout from its training set and score the champion on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policies.project import ProjectConfig
from registry.ledger import Ledger
from registry.lineage import training_set
from registry.release import ReleaseContext
from registry.verify import VerificationReport

__all__ = ["release_context", "score_champion"]


def release_context(root: Path, home: Path, project: ProjectConfig, ledger: Ledger, policies: Path) -> ReleaseContext:
    return ReleaseContext(root, home, project, ledger, policies, score_champion=score_champion)


def score_champion(ctx: ReleaseContext, report: VerificationReport, champion: str) -> dict[str, float] | None:
    """Champion ``champion`` scored on the candidate's holdout, from its digest-checked training set."""
    import mlflow.sklearn
    import pandas as pd
    from mlflow import MlflowClient

    from pipelines.evaluate import holdout_metrics
    from pipelines.train import split_by_time

    run: Any = MlflowClient().get_run(report.tags["conveyor.run_id"])
    digest = report.tags.get("conveyor.training_set") or run.data.tags.get("conveyor.training_set")
    path = training_set(ctx.ledger, digest)
    if path is None:
        return None
    _, holdout = split_by_time(ctx.project, pd.read_parquet(path))
    return holdout_metrics(mlflow.sklearn.load_model(f"models:/{report.name}/{champion}"), ctx.project, holdout)
