"""Release as the pipelines see it: promotion may score the champion on the candidate's holdout.

The release itself (verify, decide, move an alias, record) lives in ``registry.release``, where
the service can use it too; this adds what only the pipelines know how to do: rebuild the
candidate's holdout from its training set and score the champion on it. Pass ``score_champion``
to ``registry.release.promote``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conveyor.registry.lineage import training_set
from conveyor.registry.loading import load_estimator, verified_copy
from conveyor.registry.verify import VerificationReport
from conveyor.registry.workspace import Workspace

__all__ = ["score_champion"]


def score_champion(
    ws: Workspace, report: VerificationReport, champion: str, candidate: Path
) -> dict[str, float] | None:
    """Champion ``champion`` scored on the candidate's holdout, from its digest-checked training set
    (an LLM release: evaluated on the candidate's evaluation sets). The champion is verified into a
    private copy and loaded from it; the candidate from ``candidate``, its verified files. A champion
    that does not verify is ``SignatureInvalid``: the comparison is refused, not made without it."""
    if report.tags.get("conveyor.kind") == "llm-release":
        # here: only the kind of model being scored is loaded
        from conveyor.pipelines.llm.flow import score_llm_champion

        return score_llm_champion(ws, report, champion)
    import pandas as pd

    from conveyor.pipelines.evaluate import gain_interval, holdout_metrics
    from conveyor.pipelines.train import split_by_time

    run: Any = ws.mlflow().get_run(report.tags["conveyor.run_id"])
    digest = report.tags.get("conveyor.training_set") or run.data.tags.get("conveyor.training_set")
    with ws.ledger() as ledger:
        path = training_set(ledger, digest)
    if path is None:
        return None
    project = ws.project()
    _, holdout = split_by_time(project, pd.read_parquet(path))
    loadable = ws.loadable_types()
    with ws.ledger() as ledger, verified_copy(ws, f"{report.name}/{champion}", ledger, what="The champion") as found:
        theirs = load_estimator(found[1], loadable)
    metrics = holdout_metrics(theirs, project, holdout)
    rule = ws.policy("promotion").value.beat_champion
    if rule is not None:
        ours = load_estimator(candidate, loadable)
        interval = gain_interval(ours, theirs, project, holdout, rule.metric)
        if interval is not None:
            metrics |= {f"gain_low_{rule.metric}": interval[0], f"gain_high_{rule.metric}": interval[1]}
    return metrics
