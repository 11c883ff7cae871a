"""The LLM release flow and its stages: weights → prompt → build → evaluate → sign → register, and
the LLM loop's return path (feedback, live traffic checked, re-evaluation, rebuild).

One module per stage, each a plain function; ``pipelines.llm.flow`` runs them in order (as
Prefect tasks of one flow run when the Workspace says so) and writes the ledger events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor._exports import exports as _exports

if TYPE_CHECKING:
    from conveyor.pipelines.llm.flow import ReleaseOutcome, release_flow, run_release
    from conveyor.pipelines.llm.loop import check_knowledge, check_llm, rebuild, reevaluate

__all__ = [
    "ReleaseOutcome",
    "check_knowledge",
    "check_llm",
    "rebuild",
    "reevaluate",
    "release_flow",
    "run_release",
]

__getattr__ = _exports(
    __name__,
    {
        "conveyor.pipelines.llm.flow": ["ReleaseOutcome", "release_flow", "run_release"],
        "conveyor.pipelines.llm.loop": ["check_knowledge", "check_llm", "rebuild", "reevaluate"],
    },
)
