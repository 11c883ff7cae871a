"""``conveyor demo``: data, a signed champion, then the whole loop, an audit and a seal.

Every step is an ordinary Conveyor operation on the project's Workspace; ``say`` prints a line.
Every outcome it prints is noted in a ``DemoRecord`` and read back from the registry and the
ledger at the end: the last line says the record agrees, or the demo fails (exit 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor.cli._common import training_progress
from conveyor.cli.data import print_outcome
from conveyor.cli.release import print_promotion
from conveyor.demo.llm import run_llm_demo
from conveyor.demo.record import DemoRecord
from conveyor.registry.pages import publish

if TYPE_CHECKING:
    from conveyor.api import Workspace

__all__ = ["run_demo", "run_llm_only"]


def run_demo(
    ws: Workspace, say: Callable[[Any], None], *, data_only: bool = False, loop: bool = True, llm: bool = True
) -> None:
    """The demo as ``conveyor demo`` runs it: ``data_only`` stops after the data, ``loop`` false
    after the champion; ``llm`` adds the LLM part at the end. Ends with the record's check."""
    record = DemoRecord.start(ws.stores)
    _run(ws, say, record, data_only=data_only, loop=loop, llm=llm)
    say("")
    say(record.check(ws))


def run_llm_only(ws: Workspace, say: Callable[[Any], None]) -> None:
    """``conveyor demo --llm``: the LLM part alone, with the record's check."""
    record = DemoRecord.start(ws.stores)
    run_llm_demo(ws, say, record)
    say("")
    say(record.check(ws))


def _run(
    ws: Workspace, say: Callable[[Any], None], record: DemoRecord, *, data_only: bool, loop: bool, llm: bool
) -> None:
    # here: only the part of the demo that runs loads it
    from conveyor.demo.prepare import prepare_demo_data

    with ws.stores.ledger() as ledger:
        prepared = prepare_demo_data(ws.root, ledger)
    for item in prepared:
        ref = item.ref
        made = f"generated {item.rows:,} rows" if item.generated else "found on disk"
        recorded = "recorded as" if ref.newly_recorded else "already recorded as"
        say(f"{ref.path.relative_to(ws.root)}: {made}, {ref.size:,} bytes")
        say(f"  content  {ref.digest}")
        say(f"  DVC md5  {ref.md5}")
        say(f"  ledger   {recorded} event #{ref.event}")
    if data_only:
        return
    say("")
    say("Training on the first version (validate, features, train, evaluate, sign, register)...")
    with training_progress("Training..."):
        outcome = ws.train(prepared[0].ref.path)
    print_outcome(outcome)
    record.registered(outcome.name, str(outcome.version))
    say("")
    say(f"Promoting {outcome.name}/{outcome.version} to champion (verify, then policies/promotion.yaml decides)...")
    promotion = ws.promote(f"{outcome.name}/{outcome.version}", to="champion")
    print_promotion(promotion)
    record.promoted(promotion.name, str(promotion.version), promotion.target, promotion.decision.ok)
    if not loop:
        return
    say("")
    say("The loop: serve, watch for drift, retrain, canary (policies/drift.yaml, policies/canary.yaml)...")
    from conveyor.demo.loop import run_loop

    started = time.monotonic()
    steps = run_loop(ws.stores, prepared[0].ref.path, prepared[1].ref.path, say, record)
    say("")
    _summary(steps, time.monotonic() - started, say)
    say("")
    say(f"Auditing {outcome.name}@champion end to end, then sealing the ledger...")
    graph = _audit_and_seal(ws, f"{outcome.name}@champion", say, record)
    say("")
    first = prepared[0].ref.path.relative_to(ws.root)
    say(f"MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {ws.stores.tracking_uri} (then http://127.0.0.1:5000)")
    say(f"Reports:    {ws.stores.reports / 'index.html'} (every page, newest first, each opening with its verdict)")
    say(f"Lineage:    `conveyor lineage {first}` shows everything the first dataset fed, retraining included;")
    say(f"            the champion's graph: {graph}")
    say(
        f"Audit:      `conveyor audit {outcome.name}@champion` re-verifies every link; add `--export evidence.tar.gz` for an offline bundle."
    )
    if llm:
        say("")
        say("The same loop for an LLM release (assistant.yaml, policies/promotion.yaml `llm`)...")
        run_llm_demo(ws, say, record)


def _summary(steps: list[Any], seconds: float, say: Callable[[Any], None]) -> None:
    from rich.table import Table

    table = Table(title="The loop", title_justify="left", show_edge=False)
    table.add_column("step")
    table.add_column("time", justify="right")
    table.add_column("outcome", overflow="fold")
    for step in steps:
        table.add_row(
            step.step, f"{step.seconds:.1f}s", "\n".join([step.outcome, *(link for link in step.links if link)])
        )
    table.add_row("the loop", f"{seconds:.1f}s", "")
    say(table)


def _audit_and_seal(ws: Workspace, ref: str, say: Callable[[Any], None], record: DemoRecord) -> Any:
    # here: only the part of the demo that runs loads it
    from conveyor.lineage_html import lineage_page
    from conveyor.render import audit_verdict

    report = ws.audit(ref)
    sealed = ws.seal()
    graph = ws.stores.reports / "lineage-champion.html"
    digest = report.verification.version_digest
    verdict = audit_verdict(report)
    if digest:
        found = ws.lineage(digest)
        v = report.verification
        page = lineage_page(found.walks, f"{v.name}/{v.version} ({ref})", None, verdict, root=ws.root, model=v.name)
        publish(graph, page, ws.stores.reports)
    record.audited(ref, report)
    record.sealed(sealed.seq)
    say(f"  {verdict[1]}; ledger sealed at event #{sealed.seq:,}.")
    return graph
